"""Reliable provisional responses: 100rel, RSeq, RAck and PRACK (RFC 3262).

Theory of operation
-------------------
A provisional response is normally sent once and may be lost. A 183 that
carries the callee's SDP answer (early media) must not be, so RFC 3262 makes
a 1xx reliable end to end: the UAS numbers it (``RSeq``), marks it
``Require: 100rel`` and re-sends it until the UAC acknowledges it with a
PRACK whose ``RAck`` names it. Both halves are pure state here; the call
layer sends what they hand out and arms one timer from ``next_deadline()``.

UAS side, one `ReliableProvisionalSender` per INVITE server transaction
(the RSeq space is per transaction, §3):

* ``send(response, now)`` numbers the response (a random first RSeq in
  1..2**31-1, then +1), stamps it, and says whether it goes out now or
  waits: only one reliable provisional is unacknowledged at a time (§3
  requires it for the first; we keep to it for all, as §3 recommends, so
  that the UAC never sees a gap).
* It is re-sent at T1, 2*T1, 4*T1... after the first sending, doubling
  without cap (§3), for as long as no PRACK came: ``handle_timer(now)``
  returns what to re-send. 64*T1 after the first sending without a PRACK,
  the sender gives up (``timed_out``) and the INVITE must be rejected with a
  5xx (§3). Retransmission happens over reliable transports too: the PRACK
  is end to end and a proxy on the way may use UDP.
* ``receive_prack(rack, now)`` is True when the PRACK matches the
  outstanding response (answer it 200; the next queued response goes out,
  pulled with ``take_outgoing()``), False otherwise (answer 481, §3).
* ``final_sent()``: once a final response is out, no new reliable 1xx may
  be sent and retransmissions stop, but a PRACK for the outstanding one
  still matches (§3). ``may_send_final(status)`` says whether a 2xx must
  wait: not while an unacknowledged 1xx carries a session description.

UAC side, one `PrackTracker` per early dialog (RSeq values of different
forks are independent, RFC 3262 errata 4600 and 4604):
``receive_provisional(response)`` classifies each 1xx: unreliable, new (in
order: process it and PRACK it), a retransmission (ignore it: §4 says the
UAC MUST NOT re-send its PRACK for it; the PRACK's own client transaction
retransmits), or out of order (a gap: MUST NOT be PRACKed or processed,
§4; we discard it and let the UAS's retransmissions fill the gap).

Grammar (RFC 3262 §7.1, §7.2)::

    RSeq          = "RSeq" HCOLON response-num
    RAck          = "RAck" HCOLON response-num LWS CSeq-num LWS Method
    response-num  = 1*DIGIT
    CSeq-num      = 1*DIGIT
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pbx.sip.errors import LocalProtocolError, SipParseError
from pbx.sip.headers import TOKEN, parse_non_negative_int
from pbx.sip.message import Message, Request, Response
from pbx.sip.timers import TimerSettings

__all__ = [
    "FIRST_RSEQ_MAX",
    "MAX_RSEQ",
    "OPTION_TAG",
    "PrackTracker",
    "ProvisionalKind",
    "ProvisionalSend",
    "ProvisionalVerdict",
    "RAck",
    "ReliableProvisionalSender",
    "format_rseq",
    "is_reliable_provisional",
    "parse_rseq",
    "requires_100rel",
    "supports_100rel",
]

OPTION_TAG = "100rel"
FIRST_RSEQ_MAX = 2**31 - 1  # §3: the first RSeq "MUST be between 1 and 2**31 - 1"
MAX_RSEQ = 2**32 - 1  # response-num is 32 bits; starting below 2**31 leaves room to count
_MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5
_DEFAULT_TIMERS = TimerSettings()


def parse_rseq(text: str) -> int:
    """The number of an ``RSeq`` value; 1 to 2**32-1."""
    rseq = parse_non_negative_int(text, "RSeq", MAX_RSEQ)
    if rseq == 0:
        raise SipParseError("RSeq of 0")
    return rseq


def format_rseq(rseq: int) -> str:
    if not 1 <= rseq <= MAX_RSEQ:
        raise LocalProtocolError(f"RSeq {rseq} out of range")
    return str(rseq)


@dataclass(frozen=True, slots=True, kw_only=True)
class RAck:
    """``RAck: 776656 1 INVITE``: which reliable 1xx a PRACK acknowledges (§7.2).

    The RSeq of the response, and the CSeq number and method of the
    response (those of the INVITE it answers).
    """

    rseq: int
    cseq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> RAck:
        parts = text.split()
        if len(parts) != 3:
            raise SipParseError(f"bad RAck {text[:40]!r}")
        rseq_text, cseq_text, method = parts
        if not TOKEN.fullmatch(method):
            raise SipParseError(f"bad method in RAck {method[:20]!r}")
        return cls(rseq=parse_rseq(rseq_text),
                   cseq=parse_non_negative_int(cseq_text, "RAck CSeq", _MAX_CSEQ),
                   method=method)

    @classmethod
    def from_request(cls, request: Request) -> RAck | None:
        """The RAck of a PRACK, or None if it has none (answer 400)."""
        text = request.headers.get("rack")
        return None if text is None else cls.parse(text)

    @classmethod
    def acknowledging(cls, response: Response) -> RAck:
        """The RAck a PRACK for this reliable provisional `response` carries (§4)."""
        text = response.headers.get("rseq")
        if text is None:
            raise SipParseError("reliable provisional response without RSeq", answerable=False)
        cseq = response.cseq
        return cls(rseq=parse_rseq(text), cseq=cseq.number, method=cseq.method)

    def __str__(self) -> str:
        return f"{self.rseq} {self.cseq} {self.method}"


def supports_100rel(request: Request) -> bool:
    """The UAC can take reliable provisionals: ``100rel`` in Supported or Require (§3)."""
    return _lists(request, "supported") or _lists(request, "require")


def requires_100rel(request: Request) -> bool:
    """The UAC insists (``Require: 100rel``): every 1xx but 100 MUST be sent reliably (§3)."""
    return _lists(request, "require")


def _lists(message: Message, header: str) -> bool:
    tokens = message.require if header == "require" else message.supported
    return any(token.lower() == OPTION_TAG for token in tokens)


def is_reliable_provisional(response: Response) -> bool:
    """A 101-199 with ``Require: 100rel`` (§4: on a 100 the tag MUST be ignored)."""
    return 101 <= response.status <= 199 and _lists(response, "require")


def _randint(low: int, high: int) -> int:
    """A uniform integer in [low, high] from the system's CSPRNG."""
    return low + secrets.randbelow(high - low + 1)


# ------------------------------------------------------------------ UAS side


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionalSend:
    """What became of a provisional response handed to the sender.

    ``response`` is the response as it goes on the wire (with ``Require:
    100rel`` and ``RSeq: rseq``). ``queued`` False: send it now. True: an
    earlier one awaits its PRACK; this one comes out of ``take_outgoing()``
    once that PRACK arrives (or never, if a final response comes first).
    """

    response: Response
    rseq: int
    queued: bool


class _Outstanding:
    """The one reliable provisional awaiting its PRACK, and its timers."""

    __slots__ = ("give_up_at", "interval_s", "next_at", "response", "rseq")

    def __init__(self, response: Response, rseq: int, now: float, t1_s: float) -> None:
        self.response = response
        self.rseq = rseq
        self.interval_s = t1_s
        self.next_at = now + t1_s
        self.give_up_at = now + 64 * t1_s


class ReliableProvisionalSender:
    """The UAS half of RFC 3262 §3 for one INVITE server transaction.

    ``randint(low, high)`` draws the first RSeq (inject a fixed one in
    tests); ``timers`` gives T1. ``max_queued`` bounds the provisionals
    waiting behind an unacknowledged one: a call sends two or three at
    most, so more is a bug of ours (`LocalProtocolError`).
    """

    __slots__ = ("_cseq", "_final_sent", "_max_queued", "_next_rseq", "_outgoing",
                 "_outstanding", "_queue", "_randint", "_t1_s", "_timed_out")

    def __init__(
        self,
        *,
        timers: TimerSettings = _DEFAULT_TIMERS,
        randint: Callable[[int, int], int] = _randint,
        max_queued: int = 8,
    ) -> None:
        self._t1_s = timers.t1_s
        self._randint = randint
        self._max_queued = max_queued
        self._next_rseq: int | None = None
        self._cseq: tuple[int, str] | None = None
        self._outstanding: _Outstanding | None = None
        self._queue: deque[tuple[Response, int]] = deque()
        self._outgoing: list[Response] = []
        self._final_sent = False
        self._timed_out = False

    # ------------------------------------------------------------ inputs

    def send(self, response: Response, now: float) -> ProvisionalSend:
        """Make `response` (a 101-199 to our INVITE) reliable and schedule it."""
        if not 101 <= response.status <= 199:
            raise LocalProtocolError(f"a {response.status} cannot be sent reliably")
        if self._final_sent or self._timed_out:
            # §3: no new reliable provisional after a final response.
            raise LocalProtocolError("reliable provisional after the final response")
        cseq = (response.cseq.number, response.cseq.method)
        if self._cseq is None:
            self._cseq = cseq
        elif cseq != self._cseq:
            raise LocalProtocolError("responses to different requests share one sender")
        rseq = self._take_rseq()
        stamped = _stamped(response, rseq)
        if self._outstanding is None:
            self._outstanding = _Outstanding(stamped, rseq, now, self._t1_s)
            return ProvisionalSend(response=stamped, rseq=rseq, queued=False)
        if len(self._queue) >= self._max_queued:
            raise LocalProtocolError(f"more than {self._max_queued} provisionals queued")
        self._queue.append((stamped, rseq))
        return ProvisionalSend(response=stamped, rseq=rseq, queued=True)

    def receive_prack(self, rack: RAck, now: float) -> bool:
        """Does this PRACK acknowledge the outstanding response? 200 if so, else 481 (§3)."""
        outstanding = self._outstanding
        if outstanding is None or self._cseq is None:
            return False
        number, method = self._cseq
        if rack != RAck(rseq=outstanding.rseq, cseq=number, method=method):
            return False
        self._outstanding = None
        if self._queue and not self._final_sent:
            response, rseq = self._queue.popleft()
            self._outstanding = _Outstanding(response, rseq, now, self._t1_s)
            self._outgoing.append(response)
        return True

    def handle_timer(self, now: float) -> list[Response]:
        """Retransmissions due at `now`; at 64*T1 without PRACK, give up (``timed_out``)."""
        outstanding = self._outstanding
        if outstanding is None or self._final_sent:
            return []
        if now >= outstanding.give_up_at:
            self._timed_out = True
            self._outstanding = None
            self._queue.clear()
            return []
        if now < outstanding.next_at:
            return []
        while outstanding.next_at <= now:
            outstanding.interval_s *= 2
            outstanding.next_at += outstanding.interval_s
        return [outstanding.response]

    def final_sent(self) -> None:
        """A final response went out: stop re-sending, drop the queue (§3)."""
        self._final_sent = True
        self._queue.clear()

    # ----------------------------------------------------------- outputs

    def next_deadline(self) -> float | None:
        outstanding = self._outstanding
        if outstanding is None or self._final_sent:
            return None
        return min(outstanding.next_at, outstanding.give_up_at)

    def take_outgoing(self) -> list[Response]:
        """Queued provisionals released by a PRACK, to send now."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    @property
    def timed_out(self) -> bool:
        """No PRACK within 64*T1: reject the INVITE with a 5xx (§3)."""
        return self._timed_out

    @property
    def outstanding_rseq(self) -> int | None:
        """The RSeq awaiting its PRACK, if any."""
        return None if self._outstanding is None else self._outstanding.rseq

    def may_send_final(self, status: int) -> bool:
        """May a final `status` go out now?

        Not a 2xx while the unacknowledged reliable provisional carries a
        session description (§3): the UAC must have the answer it PRACKed
        before the 2xx. Any body counts as one (a 1xx to an INVITE carries
        nothing else in practice). Queued responses were never sent and
        do not hold the final back.
        """
        outstanding = self._outstanding
        return not (200 <= status < 300 and outstanding is not None
                    and bool(outstanding.response.body))

    def _take_rseq(self) -> int:
        rseq = self._next_rseq
        if rseq is None:
            rseq = self._randint(1, FIRST_RSEQ_MAX)
            if not 1 <= rseq <= FIRST_RSEQ_MAX:
                raise LocalProtocolError(f"first RSeq {rseq} not in 1..2**31-1")
        if rseq > MAX_RSEQ:
            raise LocalProtocolError("RSeq space exhausted")
        self._next_rseq = rseq + 1
        return rseq


def _stamped(response: Response, rseq: int) -> Response:
    """A copy of `response` with ``Require: 100rel`` and ``RSeq`` (§3)."""
    headers = response.headers.copy()
    if not _lists(response, "require"):
        headers.add("Require", OPTION_TAG)
    headers.set("RSeq", format_rseq(rseq))
    return Response(response.status, response.reason, headers, response.body)


# ------------------------------------------------------------------ UAC side


class ProvisionalKind(enum.Enum):
    """What a UAC does with a provisional response (RFC 3262 §4)."""

    UNRELIABLE = "unreliable"
    """Not sent reliably (no ``100rel``, or a 100): process it, no PRACK."""
    NEW = "new"
    """The next in order: process it and send a PRACK with the verdict's RAck."""
    RETRANSMISSION = "retransmission"
    """Already PRACKed: ignore it; §4 says MUST NOT re-send the PRACK."""
    OUT_OF_ORDER = "out of order"
    """A gap before it: MUST NOT be PRACKed or processed (§4); discarded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionalVerdict:
    kind: ProvisionalKind
    rack: RAck | None = None
    """For NEW: the RAck header value of the PRACK to send."""


class PrackTracker:
    """The UAC half of RFC 3262 §4 for one early dialog.

    Holds the RSeq of the last in-order reliable provisional; it starts at
    the first one received, whatever its value (§4), and lasts until the
    final response.
    """

    __slots__ = ("_last_rseq",)

    def __init__(self) -> None:
        self._last_rseq: int | None = None

    @property
    def last_rseq(self) -> int | None:
        return self._last_rseq

    def receive_provisional(self, response: Response) -> ProvisionalVerdict:
        """Classify a 1xx of this dialog. Raises `SipParseError` for a bad RSeq."""
        if not is_reliable_provisional(response):
            return ProvisionalVerdict(kind=ProvisionalKind.UNRELIABLE)
        rack = RAck.acknowledging(response)
        last = self._last_rseq
        if last is not None and rack.rseq <= last:
            return ProvisionalVerdict(kind=ProvisionalKind.RETRANSMISSION)
        if last is not None and rack.rseq != last + 1:
            return ProvisionalVerdict(kind=ProvisionalKind.OUT_OF_ORDER)
        self._last_rseq = rack.rseq
        return ProvisionalVerdict(kind=ProvisionalKind.NEW, rack=rack)
