"""Merged requests (RFC 3261 §8.2.2.2): the same request arriving on two paths.

A request without a To tag whose From tag, Call-ID and CSeq match one the
PBX is handling (or answered within Timer J) but which came with another
top Via branch reached the PBX twice through forking proxies: the second
copy is answered 482 (Loop Detected).

Every request outside a dialog passes here, so the table is kept for a
registrar's rate. Its entries hold nothing the garbage collector tracks:
the keys are strings, a live entry is the transaction itself, and an
answered one is its branch, with the time it stops counting in a dict of
floats and a FIFO of parallel deques. Held as tuples, each request left
four tracked objects for the collector's young passes to walk (thousands a
second at full rate, a measurable share of a registrar's CPU:
docs/benchmarks.md, "Why the hot path is written as it is").
"""

from __future__ import annotations

from collections import deque

from pbx.sip.message import Request
from pbx.sip.peer import Peer
from pbx.sip.transaction import ServerTransaction

_SWEEP_AT_LEAST = 1024
"""Entries the table may hold before an insert sweeps it (housekeeping sweeps it too)."""


def merge_key(from_tag: str, request: Request) -> str:
    """From tag, Call-ID, CSeq number and method, in one string (none holds a space)."""
    return f"{from_tag} {request.call_id} {request.cseq.number} {request.method}"


class MergedRequests:
    """The requests in progress and the recently answered ones, by `merge_key`."""

    __slots__ = ("_answered", "_expiry_keys", "_expiry_times", "_live", "_sweep_at", "_until")

    def __init__(self) -> None:
        self._live: dict[str, ServerTransaction[Peer]] = {}
        """Requests being handled: their transaction (its request has the branch)."""
        self._answered: dict[str, str] = {}
        """Requests answered within Timer J: their branch."""
        self._until: dict[str, float] = {}
        """When each of `_answered` stops counting."""
        # Oldest first: every answered entry lives the same Timer J.
        self._expiry_times: deque[float] = deque()
        self._expiry_keys: deque[str] = deque()
        self._sweep_at = _SWEEP_AT_LEAST

    def __len__(self) -> int:
        return len(self._live) + len(self._answered)

    def is_merged(self, transaction: ServerTransaction[Peer], request: Request,
                  now: float) -> bool:
        """Whether `request` (of the new `transaction`) is a merged copy; if not, remember it."""
        from_tag = request.from_addr.tag
        if from_tag is None:
            return False
        key = merge_key(from_tag, request)
        branch = request.top_via.branch
        live = self._live.get(key)
        if live is not None:
            if live is not transaction and live.request.top_via.branch != branch:
                return True
        else:
            answered = self._answered.get(key)
            if answered is not None:
                if answered != branch and self._until[key] > now:
                    return True
                # A new request of the same key takes the place of the answered one.
                del self._answered[key]
                del self._until[key]
        self._live[key] = transaction
        if len(self._live) + len(self._answered) > self._sweep_at:
            self.sweep(now)
            self._sweep_at = 2 * (len(self._live) + len(self._answered)) + _SWEEP_AT_LEAST
        return False

    def forget(self, transaction: ServerTransaction[Peer], now: float, *,
               answered_for_s: float) -> None:
        """`transaction` left the table: drop its entry, or keep it ``answered_for_s``.

        An answered request (a tombstone absorbing retransmissions for Timer
        J) keeps counting that long; one that ended otherwise does not.
        """
        request = transaction.request
        from_tag = request.from_addr.tag
        if from_tag is None:
            return
        key = merge_key(from_tag, request)
        if self._live.get(key) is not transaction:
            return
        del self._live[key]
        if answered_for_s > 0:
            until = now + answered_for_s
            self._answered[key] = request.top_via.branch or ""
            self._until[key] = until
            self._expiry_times.append(until)
            self._expiry_keys.append(key)

    def sweep(self, now: float) -> None:
        """Forget the answered entries whose time is over.

        Only the expired front of the FIFO is visited: a registrar at
        thousands of REGISTERs a second holds some 100,000 entries, and
        rebuilding the table every second cost a noticeable share of its
        time (docs/benchmarks.md, "Why the hot path is written as it is").
        """
        times = self._expiry_times
        keys = self._expiry_keys
        until = self._until
        while times and times[0] <= now:
            times.popleft()
            key = keys.popleft()
            # The key may have been answered again since, with a later time: that one stays.
            if until.get(key, now + 1.0) <= now:
                del until[key]
                del self._answered[key]
