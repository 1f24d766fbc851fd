"""Slowing down and then refusing addresses that keep failing authentication.

Password guessing against a PBX is constant on the open Internet. Each
address that fails is counted over a sliding window; after
``slowdown_after`` failures its challenges are answered late, and after
``max_failures`` it is refused outright for ``cooldown_s``. A success clears
the count. Every failure and every block is reported to the caller, which
logs it as a security event an operator can feed to fail2ban.

Only a wrong password of a configured user is a failure. Credentials of an
unknown user are a *miss* (`record_miss`): a removed user's phone retrying
from an office's NAT address is no attack, so misses never block, but they
slow the address down exactly as failures would (failures and misses
together count toward ``slowdown_after``), so that the answers on the
wire do not tell a user who exists from one who does not.

`first_report` keeps the events that are no guess (an unknown user, a
stale nonce) to one log line per address and user per failure window.

The table is bounded (`max_tracked`); when full, the address seen longest
ago is forgotten, so a flood from many addresses costs bounded memory.
Time comes in as ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardSettings:
    max_failures: int = 10
    failure_window_s: float = 60.0
    cooldown_s: float = 300.0
    slowdown_after: int = 3
    slowdown_s: float = 1.0
    max_tracked: int = 50_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a request from an address: answer now, later, or refuse."""

    blocked_until: float | None = None
    delay_s: float = 0.0
    failures: int = 0
    """Failures of the address within the window, this one included (`record_failure`)."""

    @property
    def blocked(self) -> bool:
        return self.blocked_until is not None


ALLOW = Verdict()


class _Record:
    __slots__ = ("blocked_until", "failures", "misses")

    def __init__(self) -> None:
        self.failures: list[float] = []
        self.misses: list[float] = []
        self.blocked_until = 0.0


class AuthGuard:
    def __init__(self, settings: GuardSettings = GuardSettings()) -> None:
        self.settings = settings
        """Replaced whole on a config reload; the counts so far are kept."""
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._reported: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def check(self, address: str, now: float) -> Verdict:
        """Before handling a request: is this address refused, or to be slowed down?"""
        record = self._records.get(address)
        if record is None:
            return ALLOW
        if record.blocked_until > now:
            return Verdict(blocked_until=record.blocked_until)
        recent = self._prune(record, now) + len(record.misses)
        if recent >= self.settings.slowdown_after:
            return Verdict(delay_s=self.settings.slowdown_s)
        return ALLOW

    def record_miss(self, address: str, now: float) -> Verdict:
        """Count credentials of an unknown user: they slow the address down, never block it."""
        record = self._record(address)
        recent = self._prune(record, now)
        record.misses.append(now)
        if recent + len(record.misses) >= self.settings.slowdown_after:
            return Verdict(delay_s=self.settings.slowdown_s)
        return ALLOW

    def first_report(self, kind: str, address: str, user: str, now: float) -> bool:
        """Whether an event of `kind` for this address and user is the first in the window."""
        key = (kind, address, user)
        last = self._reported.get(key)
        if last is not None and now - last < self.settings.failure_window_s:
            return False
        if last is None and len(self._reported) >= self.settings.max_tracked:
            self._reported.popitem(last=False)
        self._reported[key] = now
        self._reported.move_to_end(key)
        return True

    def _record(self, address: str) -> _Record:
        record = self._records.get(address)
        if record is None:
            if len(self._records) >= self.settings.max_tracked:
                self._records.popitem(last=False)
            record = self._records[address] = _Record()
        else:
            self._records.move_to_end(address)
        return record

    def record_failure(self, address: str, now: float) -> Verdict:
        """Count one failed attempt; the verdict says whether it now blocks the address."""
        record = self._record(address)
        recent = self._prune(record, now)
        record.failures.append(now)
        recent += 1
        if recent >= self.settings.max_failures:
            record.blocked_until = now + self.settings.cooldown_s
            record.failures.clear()
            return Verdict(blocked_until=record.blocked_until, failures=recent)
        if recent + len(record.misses) >= self.settings.slowdown_after:
            return Verdict(delay_s=self.settings.slowdown_s, failures=recent)
        return Verdict(failures=recent)

    def record_success(self, address: str) -> None:
        self._records.pop(address, None)

    def _prune(self, record: _Record, now: float) -> int:
        """Drop what left the window; the failures still in it."""
        horizon = now - self.settings.failure_window_s
        failures = record.failures
        while failures and failures[0] <= horizon:
            failures.pop(0)
        misses = record.misses
        while misses and misses[0] <= horizon:
            misses.pop(0)
        return len(failures)

    def sweep(self, now: float) -> None:
        """Forget addresses with no recent failures and no block (called from a timer)."""
        for address in [a for a, r in self._records.items()
                        if r.blocked_until <= now and self._prune(r, now) == 0
                        and not r.misses]:
            del self._records[address]
        horizon = now - self.settings.failure_window_s
        for key in [k for k, at in self._reported.items() if at <= horizon]:
            del self._reported[key]
