"""Slowing down and then refusing addresses that keep failing authentication.

Password guessing against a PBX is constant on the open Internet. Each
address that fails is counted over a sliding window; after
``slowdown_after`` failures its challenges are answered late, and after
``max_failures`` it is refused outright for ``cooldown_s``. A success clears
the count. Every failure and every block is reported to the caller, which
logs it as a security event an operator can feed to fail2ban.

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

    @property
    def blocked(self) -> bool:
        return self.blocked_until is not None


ALLOW = Verdict()


class _Record:
    __slots__ = ("blocked_until", "failures")

    def __init__(self) -> None:
        self.failures: list[float] = []
        self.blocked_until = 0.0


class AuthGuard:
    def __init__(self, settings: GuardSettings = GuardSettings()) -> None:
        self.settings = settings
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def check(self, address: str, now: float) -> Verdict:
        """Before handling a request: is this address refused, or to be slowed down?"""
        record = self._records.get(address)
        if record is None:
            return ALLOW
        if record.blocked_until > now:
            return Verdict(blocked_until=record.blocked_until)
        recent = self._prune(record, now)
        if recent >= self.settings.slowdown_after:
            return Verdict(delay_s=self.settings.slowdown_s)
        return ALLOW

    def record_failure(self, address: str, now: float) -> Verdict:
        """Count one failed attempt; the verdict says whether it now blocks the address."""
        record = self._records.get(address)
        if record is None:
            if len(self._records) >= self.settings.max_tracked:
                self._records.popitem(last=False)
            record = self._records[address] = _Record()
        else:
            self._records.move_to_end(address)
        recent = self._prune(record, now)
        record.failures.append(now)
        recent += 1
        if recent >= self.settings.max_failures:
            record.blocked_until = now + self.settings.cooldown_s
            record.failures.clear()
            return Verdict(blocked_until=record.blocked_until)
        if recent >= self.settings.slowdown_after:
            return Verdict(delay_s=self.settings.slowdown_s)
        return ALLOW

    def record_success(self, address: str) -> None:
        self._records.pop(address, None)

    def _prune(self, record: _Record, now: float) -> int:
        horizon = now - self.settings.failure_window_s
        failures = record.failures
        while failures and failures[0] <= horizon:
            failures.pop(0)
        return len(failures)

    def sweep(self, now: float) -> None:
        """Forget addresses with no recent failures and no block (called from a timer)."""
        for address in [a for a, r in self._records.items()
                        if r.blocked_until <= now and self._prune(r, now) == 0]:
            del self._records[address]
