"""The core's one timer idiom: every timer on one reactor timer, then one flush.

Theory of operation
-------------------
The endpoint (the layer's next deadline, slowed-down answers), the
dispatcher and every call (dial timeouts, 2xx retransmissions, session
timers) ask `Timers` for timers. Each is an entry in a heap; the reactor
holds a single `DelayedCall`, for the earliest. When it fires, every entry
due runs, and then ``after`` runs once: the endpoint's flush, which drains
the transaction layer's events and sends what the timers' work queued.
Work never sends by calling back up into the endpoint [aioquic
``asyncio/protocol.py``: one timer, re-armed, then transmit].

Work that arrives from elsewhere outside any event (a plugin's answer that
comes later, a group commit that releases held answers, a dialplan coroutine
resumed by a thread) queues what it sends and calls `flush_soon`: one flush
on the reactor's next turn, however many ask for it before then. The flush
run by an event or by the timers takes the place of a pending one
(`flushed`), so work done inside an event costs no extra flush.

Why a heap rather than a `DelayedCall` each: every answered call keeps a
session timer (RFC 4028) per leg for as long as it lasts. A Twisted
`DelayedCall` costs some 600 bytes (an instance dict, three bound methods,
an argument tuple and a keyword dict); an entry here costs a fifth of
that. Times are exact, as the reactor's; cancelled entries wait in the
heap like the reactor's do, and the heap is rebuilt without them once they
are more than half of it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


def _nothing() -> None:
    pass


class Timer:
    """One timer (a `pbx.core.call.Cancellable`): an entry in `Timers`' heap."""

    __slots__ = ("at", "timers", "work")

    def __init__(self, at: float, work: Callable[[], None], timers: Timers) -> None:
        self.at = at
        self.work: Callable[[], None] | None = work
        self.timers = timers

    def __lt__(self, other: Timer) -> bool:
        return self.at < other.at

    def active(self) -> bool:
        return self.work is not None

    def cancel(self) -> None:
        if self.work is not None:
            self.work = None
            self.timers.cancelled()


class Timers:
    """Timers of the core on one reactor timer, with the flush after them (see above).

    Compiled (`pbx.compiled`): the endpoint tells it of every flush (`flushed`).
    """

    def __init__(self, clock: IReactorTime, after: Callable[[], None] = _nothing) -> None:
        # The instance's, with its namespace spelt out (see pbx.core.endpoint).
        self.log = Logger(namespace="pbx.core.timers.Timers")
        self.clock = clock
        self.after = after
        """Runs once after the timers due at a moment have run, and for `flush_soon`:
        the endpoint's flush (the shell sets it when it is built)."""
        self._heap: list[Timer] = []
        self._cancelled = 0
        self._wakeup: IDelayedCall | None = None
        self._soon: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_later(self, delay_s: float, work: Callable[[], None]) -> Timer:
        return self.call_at(self.clock.seconds() + max(0.0, delay_s), work)

    def call_at(self, at: float, work: Callable[[], None]) -> Timer:
        """A timer due at `at` on the clock (a deadline of the transaction layer, say)."""
        timer = Timer(at, work, self)
        heap = self._heap
        heapq.heappush(heap, timer)
        if heap[0] is timer:
            self._arm()
        return timer

    def flush_soon(self) -> None:
        """Ask for one flush on the reactor's next turn (work done outside any event)."""
        if self._soon is None:
            self._soon = self.clock.callLater(0, self._flush_now)

    def flushed(self) -> None:
        """A flush has just run: the one `flush_soon` asked for is no longer needed."""
        soon = self._soon
        if soon is not None:
            self._soon = None
            if soon.active():
                soon.cancel()

    def _flush_now(self) -> None:
        self._soon = None
        self.after()

    def cancelled(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled == len(heap):
            # None left: nothing of ours stays pending in the reactor.
            heap.clear()
            self._cancelled = 0
            if self._wakeup is not None and self._wakeup.active():
                self._wakeup.cancel()
            self._wakeup = None
        elif self._cancelled > 64 and self._cancelled * 2 > len(heap):
            heap[:] = [timer for timer in heap if timer.work is not None]  # in place: see _run
            heapq.heapify(heap)
            self._cancelled = 0

    def _arm(self) -> None:
        heap = self._heap
        while heap and heap[0].work is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        wakeup = self._wakeup
        if not heap:
            if wakeup is not None and wakeup.active():
                wakeup.cancel()
            self._wakeup = None
            return
        at = heap[0].at
        if wakeup is not None and wakeup.active():
            if wakeup.getTime() == at:
                return
            wakeup.cancel()
        self._wakeup = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._run)

    def _run(self) -> None:
        self._wakeup = None
        heap = self._heap
        now = self.clock.seconds()
        ran = False
        try:
            while heap and heap[0].at <= now:
                timer = heapq.heappop(heap)
                work, timer.work = timer.work, None
                if work is None:
                    self._cancelled -= 1
                    continue
                ran = True
                try:
                    work()
                except Exception:
                    self.log.failure("A timer of the core failed")
            if ran:
                self.after()
        finally:
            self._arm()
