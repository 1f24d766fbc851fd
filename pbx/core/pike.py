"""What one source address may cost: a per-address message rate, in the manner of Kamailio's pike.

Theory of operation
-------------------
An unauthenticated INVITE is cheap now (a stateless 407, `pbx.core.endpoint`),
but cheap is not free: parsing and challenging costs tens of microseconds,
and one address sending 20,000 a second would still take the whole core,
leaving the socket to drop the requests of everyone else. So every message
is counted against its source address *before* it is parsed
(`SourceLimiter.allow`), and an address above ``max_messages`` within
``window_s`` has everything it sends dropped, unparsed and unanswered, for
``block_s``: answering would only feed a spoofed victim, and dropping costs
a dictionary lookup. Other addresses are not touched.

The rate is a sliding window, estimated the way a fixed pair of windows
allows: the count of the current window plus the previous window's count
weighted by how much of it the sliding window still covers. It cannot be
fooled by a burst straddling a window boundary (a fixed window would let
twice the limit through), and costs three numbers per address.

A block is reported once, when it begins (`on_block`): the caller writes a
``flood`` security event, never one line per dropped message. Messages
keep being counted while blocked, so an address still flooding when its
block ends is blocked again by its next message, and reported again: one
line per ``block_s`` at most.

The defaults are for an office behind one NAT address: a hundred phones
booting together send some five messages each (two REGISTERs, a SUBSCRIBE
or two, their retransmissions), a few hundred within seconds, and calls
are a few a second at most. 2,000 messages within 2 s is several times
that, and a tenth of what a flood needs to hurt.

Memory is bounded: at most ``max_tracked`` addresses, the oldest forgotten
first past it, and `sweep` forgets addresses quiet for two windows. The
table is plain dicts of strings and numbers, which the garbage collector
does not track: a flood from many addresses costs no collection time.
Time comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceLimits:
    """The ``[security]`` keys of the per-source limit (``max_messages`` 0: no limit)."""

    max_messages: int = 2000
    window_s: float = 2.0
    block_s: float = 30.0
    max_tracked: int = 20_000


BlockReport = Callable[[str, float, float], None]
"""(address, messages counted within the window, blocked until): a block began."""


class SourceLimiter:
    """Per-address message counts, and the addresses blocked for sending too many."""

    def __init__(self, limits: SourceLimits = SourceLimits(),
                 on_block: BlockReport | None = None) -> None:
        self.limits = limits
        """Replaced whole on a config reload; the counts so far are kept."""
        self.on_block = on_block
        self._started: dict[str, float] = {}  # when the address's current window began
        self._counts: dict[str, int] = {}  # messages within the current window
        self._previous: dict[str, int] = {}  # messages within the window before it
        self._blocked: dict[str, float] = {}  # blocked addresses: until when
        self._swept_at = float("-inf")
        self.dropped = 0
        """Messages dropped from blocked addresses (a counter for operators and benchmarks)."""

    def __len__(self) -> int:
        """Addresses tracked."""
        return len(self._started)

    def is_blocked(self, address: str, now: float) -> bool:
        until = self._blocked.get(address)
        return until is not None and now < until

    def allow(self, address: str, now: float) -> bool:
        """Count one message from `address`: False when it is to be dropped."""
        limits = self.limits
        limit = limits.max_messages
        if limit <= 0:
            return True
        window = limits.window_s
        started = self._started.get(address)
        if started is None:
            if len(self._started) >= limits.max_tracked:
                self._forget_oldest(now)
            self._started[address] = now
            self._counts[address] = 1
            self._previous[address] = 0
            return limit >= 1
        count = self._counts[address]
        elapsed = now - started
        if elapsed >= window:
            windows = int(elapsed // window)
            previous = count if windows == 1 else 0
            started += windows * window
            elapsed = now - started
            self._started[address] = started
            self._previous[address] = previous
            count = 0
        else:
            previous = self._previous[address]
        count += 1
        self._counts[address] = count
        blocked_until = self._blocked.get(address)
        if blocked_until is not None:
            if now < blocked_until:
                self.dropped += 1
                return False
            del self._blocked[address]
        rate = count + previous * (window - elapsed) / window
        if rate <= limit:
            return True
        until = now + limits.block_s
        self._blocked[address] = until
        self.dropped += 1
        if self.on_block is not None:
            self.on_block(address, rate, until)
        return False

    def _forget_oldest(self, now: float) -> None:
        """Make room for a new address: the quiet ones go, else the first tracked.

        The quiet ones are looked for once a window at most: a flood from
        ever new addresses would otherwise walk the whole table per message.
        """
        if now - self._swept_at >= self.limits.window_s:
            self.sweep(now)
        if len(self._started) >= self.limits.max_tracked:
            self._forget(next(iter(self._started)))

    def _forget(self, address: str) -> None:
        del self._started[address]
        del self._counts[address]
        del self._previous[address]
        self._blocked.pop(address, None)

    def sweep(self, now: float) -> None:
        """Forget addresses quiet for two windows and not blocked (housekeeping calls this)."""
        self._swept_at = now
        horizon = now - 2 * self.limits.window_s
        blocked = self._blocked
        for address in [address for address, started in self._started.items()
                        if started <= horizon and blocked.get(address, 0.0) <= now]:
            self._forget(address)
