"""What the four transaction machines share: states, inputs, actions, the timer heap.

Theory of operation
-------------------
Each machine of RFC 3261 §17 (with the Accepted state of RFC 6026) is three
pieces of data and a small interpreter [h11 ``_state.py``]:

* ``TABLE``: ``(state, input) -> (next state, actions)``. An input is a
  message class (a retransmitted request, an ACK, a 1xx, a 2xx, a 300-699),
  a transport error, or a named timer firing. A pair missing from the table
  is an input the figure does not draw: from the network or a timer it is
  ignored (absorbed), from the TU it is a `LocalProtocolError` (our bug).
* ``TIMERS``: the timers that run in each state. Entering a state cancels
  every running timer not listed for it and starts those listed that are not
  running yet, so "Timer E keeps running from Trying into Proceeding" and
  "entering Completed starts D" are both one line of data. A timer that is
  zero over a reliable transport (D, I, J, K, §17 Table 4) fires in the same
  step; one that is not used over it (A, E, G) is never started.
* ``RETRANSMIT_TIMER``: the one timer (A, E or G) whose interval doubles on
  each firing, up to `TimerSettings.backoff_cap_s`.

Actions are the verbs of the figures: send the request, pass a message to
the TU, send the ACK, send or re-send the response, report a timeout. They
write into the owning `TransactionLayer`: bytes into its outgoing list,
events into its queue, deadlines into its `TimerQueue`. A machine never
reads a clock or touches a socket; ``now`` comes in with every input.

Timers live in one heap per layer, with lazy deletion: cancelling a timer
just forgets its sequence number, and a stale heap entry is dropped when it
surfaces (or when stale entries outnumber live ones, by one rebuild), so
`next_deadline` is O(1) amortised and each firing O(log n) [aioquic loss
timers, the standard library ``sched`` idea without its lock].
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Generic, TypeAlias, TypeVar, assert_never

from pbx.sip.errors import LocalProtocolError
from pbx.sip.events import TransactionTimedOut, TransportErrorReported
from pbx.sip.message import Request, Response
from pbx.sip.timers import Timer

if TYPE_CHECKING:
    from pbx.sip.transaction import TransactionLayer

A = TypeVar("A")

MAGIC_COOKIE = "z9hG4bK"
"""Branch prefix of RFC 3261 requests (§8.1.1.7); without it, §17.2.3's RFC 2543 rules apply."""


class TransactionState(enum.Enum):
    """The states of RFC 3261 Figures 5-8 and RFC 6026 Figures 5 and 7, named as drawn."""

    # Identity hashing: Enum's default hashes the member name in Python code,
    # and every input looks up (state, input) in a table. Members are
    # singletons compared by identity, so the object hash is consistent.
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(enum.Enum):
    """What can happen to a transaction: the labels above the lines in the figures.

    PROVISIONAL, SUCCESS and FAILURE are responses: received from the network
    by a client transaction, handed down by the TU to a server transaction.
    """

    __hash__ = object.__hash__  # see TransactionState

    REQUEST = "request retransmission"
    ACK = "ACK"
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "300-699"
    TRANSPORT_ERROR = "transport error"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TIMER_TRYING = "Timer 100"


TIMER_INPUT: Mapping[Timer, Input] = {timer: Input[f"TIMER_{timer.name}"] for timer in Timer}
_INPUT_TIMER: Mapping[Input, Timer] = {value: key for key, value in TIMER_INPUT.items()}


def response_input(status: int) -> Input:
    """The input class of a response status (RFC 3261 §7.2 classes)."""
    if status < 200:
        return Input.PROVISIONAL
    return Input.SUCCESS if status < 300 else Input.FAILURE


class Action(enum.Enum):
    """The verbs under the lines in the figures."""

    __hash__ = object.__hash__  # see TransactionState

    SEND_REQUEST = "send the request"  # client: (re)transmit it
    BACK_OFF = "restart the retransmit timer, doubled"  # A (no cap), E and G (cap T2)
    RETRY_AT_T2 = "restart Timer E at T2"  # client non-INVITE in Proceeding
    PASS_UP = "pass to the TU"  # response (client) or ACK for a 2xx (server)
    SEND_ACK = "send the ACK for a non-2xx"  # client INVITE, §17.1.1.3
    SEND_PENDING_CANCEL = "send a CANCEL the TU asked for before a 1xx"  # §9.1
    SEND_RESPONSE = "send the TU's response"  # server
    RESEND_RESPONSE = "re-send the last response"  # server
    SEND_TRYING = "send 100 Trying"  # server INVITE, §17.2.1
    REPORT_TIMEOUT = "inform the TU of a timeout"  # B, F, H
    REPORT_TRANSPORT_ERROR = "inform the TU of a transport error"  # §17.1.4, §17.2.4


Row: TypeAlias = tuple[TransactionState, tuple[Action, ...]]
Table: TypeAlias = Mapping[tuple[TransactionState, Input], Row]
TimerPlan: TypeAlias = Mapping[TransactionState, tuple[Timer, ...]]


class Transaction(Generic[A]):
    """One transaction: its request, its peer, its state and its running timers.

    Created and driven only by a `TransactionLayer`; the TU reads the public
    properties and passes the object back to the layer's commands.
    """

    TABLE: ClassVar[Table]
    TIMERS: ClassVar[TimerPlan]
    RETRANSMIT_TIMER: ClassVar[Timer | None] = None
    INITIAL_STATE: ClassVar[TransactionState]

    __slots__ = ("_interval_s", "_key", "_layer", "_retransmit_timer", "_state", "_table",
                 "_timer_plan", "_timers", "peer", "reliable", "request")

    def __init__(
        self,
        layer: TransactionLayer[A],
        key: str,
        request: Request,
        peer: A,
        reliable: bool,
    ) -> None:
        self._layer = layer
        self._key = key
        self.request = request
        """The request that created the transaction."""
        self.peer = peer
        """Where the request went (client) or came from (server); responses go back there."""
        self.reliable = reliable
        """Over TCP/TLS/WS: no retransmissions, zero wait timers (§17 Table 4)."""
        self._state = self.INITIAL_STATE
        # The class's machine, in fields of this object: compiled, a ClassVar
        # read through an instance is a generic attribute lookup, a slow one
        # (docs/benchmarks.md, "Why the hot path is written as it is"), and
        # every input and state change reads these.
        self._table = self.TABLE
        self._timer_plan = self.TIMERS
        self._retransmit_timer = self.RETRANSMIT_TIMER
        self._timers: dict[Timer, tuple[float, int]] = {}
        self._interval_s = 0.0

    @property
    def state(self) -> TransactionState:
        return self._state

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def branch(self) -> str | None:
        return self.request.top_via.branch

    @property
    def timers(self) -> Mapping[Timer, float]:
        """The running timers and their deadlines (a copy)."""
        return {timer: when for timer, (when, _) in self._timers.items()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.branch} {self._state.value}>"

    # ------------------------------------------------------- the interpreter

    def _start(self, now: float) -> None:
        """Start the timers of the initial state (called once, after the table holds us)."""
        self._enter(self._state, now)

    def _apply(
        self,
        event: Input,
        now: float,
        message: Request | Response | None = None,
        source: A | None = None,
    ) -> bool:
        """Run one input through the table; False if the table has no row for it."""
        row = self._table.get((self._state, event))
        if row is None:
            return False
        next_state, actions = row
        for action in actions:
            self._act(action, event, now, message, source)
        if next_state is not self._state and self._state is not TransactionState.TERMINATED:
            self._enter(next_state, now)
        return True

    def _enter(self, state: TransactionState, now: float) -> None:
        queue = self._layer._timer_queue
        running = self._timer_plan.get(state, ())
        if self._timers:
            for timer in [t for t in self._timers if t not in running]:
                queue.cancel(self, timer)
        self._state = state
        if state is TransactionState.TERMINATED:
            self._layer._retire(self)
            return
        due_now: list[Timer] = []
        settings = self._layer.settings
        for timer in running:
            if timer in self._timers:
                continue
            duration = settings.duration_s(timer, reliable=self.reliable)
            if duration is None:
                continue
            if timer is self._retransmit_timer:
                self._interval_s = duration
            if duration == 0:
                due_now.append(timer)
            else:
                queue.arm(self, timer, now + duration)
        for timer in due_now:
            if self._state is state:
                self._fire(timer, now)

    def _fire(self, timer: Timer, now: float) -> None:
        self._apply(TIMER_INPUT[timer], now)

    def _act(
        self,
        action: Action,
        event: Input,
        now: float,
        message: Request | Response | None,
        source: A | None,
    ) -> None:
        layer = self._layer
        match action:
            case Action.SEND_REQUEST:
                self._send_request()
            case Action.BACK_OFF:
                timer = _INPUT_TIMER[event]
                cap = layer.settings.backoff_cap_s(timer)
                self._interval_s = min(self._interval_s * 2, cap)
                layer._timer_queue.arm(self, timer, now + self._interval_s)
            case Action.RETRY_AT_T2:
                self._interval_s = layer.settings.t2_s
                layer._timer_queue.arm(self, _INPUT_TIMER[event], now + self._interval_s)
            case Action.PASS_UP:
                self._pass_up(message, source)
            case Action.SEND_ACK:
                self._send_ack(message)
            case Action.SEND_PENDING_CANCEL:
                self._send_pending_cancel(now)
            case Action.SEND_RESPONSE:
                self._send_response(message)
            case Action.RESEND_RESPONSE:
                self._resend_response()
            case Action.SEND_TRYING:
                self._send_trying()
            case Action.REPORT_TIMEOUT:
                layer._emit(TransactionTimedOut(transaction=self, timer=_INPUT_TIMER[event]))
            case Action.REPORT_TRANSPORT_ERROR:
                layer._emit(TransportErrorReported(transaction=self))
            case _:  # pragma: no cover - exhaustiveness is checked by mypy
                assert_never(action)

    # Verbs a machine uses; the base refuses those its table must never name.

    def _unused(self, action: Action) -> LocalProtocolError:
        return LocalProtocolError(f"{type(self).__name__} has no action {action.value!r}")

    def _send_request(self) -> None:
        raise self._unused(Action.SEND_REQUEST)

    def _pass_up(self, message: Request | Response | None, source: A | None) -> None:
        raise self._unused(Action.PASS_UP)

    def _send_ack(self, message: Request | Response | None) -> None:
        raise self._unused(Action.SEND_ACK)

    def _send_pending_cancel(self, now: float) -> None:
        raise self._unused(Action.SEND_PENDING_CANCEL)

    def _send_response(self, message: Request | Response | None) -> None:
        raise self._unused(Action.SEND_RESPONSE)

    def _resend_response(self) -> None:
        raise self._unused(Action.RESEND_RESPONSE)

    def _send_trying(self) -> None:
        raise self._unused(Action.SEND_TRYING)


class TimerQueue(Generic[A]):
    """Every running timer of a layer in one heap, with lazy deletion.

    A transaction's ``_timers`` maps each running timer to ``(deadline,
    sequence number)``; a heap entry is live only while that mapping still
    holds its sequence number. Stale entries are skipped when they surface
    and purged in one O(n) rebuild once they outnumber live ones, so a
    flood of short transactions cannot grow the heap (nor keep terminated
    transactions alive through it) without bound.
    """

    __slots__ = ("_counter", "_heap", "_stale")

    _REBUILD_FLOOR = 1024  # below this many stale entries a rebuild is not worth it

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Transaction[A], Timer]] = []
        self._counter = itertools.count()
        self._stale = 0

    def __len__(self) -> int:
        """Heap entries, live and stale (for tests of the bound and for metrics)."""
        return len(self._heap)

    def arm(self, transaction: Transaction[A], timer: Timer, when: float) -> None:
        seq = next(self._counter)
        replaced = transaction._timers.get(timer)
        transaction._timers[timer] = (when, seq)
        heapq.heappush(self._heap, (when, seq, transaction, timer))
        if replaced is not None:
            self._note_stale()

    def cancel(self, transaction: Transaction[A], timer: Timer) -> None:
        if transaction._timers.pop(timer, None) is not None:
            self._note_stale()

    def _note_stale(self) -> None:
        self._stale += 1
        if self._stale > self._REBUILD_FLOOR and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if _live(entry)]
            heapq.heapify(self._heap)
            self._stale = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not _live(heap[0]):
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> tuple[Transaction[A], Timer] | None:
        """The earliest live timer due at `now`, removed from its transaction, or None."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not _live(entry):
                self._stale -= 1
                continue
            _, _, transaction, timer = entry
            del transaction._timers[timer]
            return transaction, timer
        return None


def _live(entry: tuple[float, int, Transaction[A], Timer]) -> bool:
    _, seq, transaction, timer = entry
    running = transaction._timers.get(timer)
    return running is not None and running[1] == seq
