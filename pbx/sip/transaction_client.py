"""Client transactions: RFC 3261 §17.1 (Figures 5 and 6) with RFC 6026 §7.2.

Theory of operation
-------------------
A client transaction sends one request and delivers its responses to the TU.
Over UDP it retransmits the request until a response shows the request got
through: Timer A doubles from T1 without cap for an INVITE (§17.1.1.2),
Timer E doubles from T1 up to T2 for anything else and, once a provisional
response arrives, keeps firing every T2 (§17.1.2.2: a non-INVITE server must
answer quickly, so the client keeps probing). Timers B and F give up after
64*T1 and report `TransactionTimedOut`, which the TU treats as a 408.

An INVITE is special in two ways. A non-2xx final response is acknowledged
*by the transaction* (§17.1.1.3): the ACK reuses the INVITE's branch, so it
belongs to this transaction and is re-sent, without bothering the TU, for
every retransmission of that response during Timer D. A 2xx is not
acknowledged here: its ACK is end to end, built by the TU from the dialog
with a branch of its own. RFC 6026 §7.2 adds the Accepted state so that
retransmissions of the 2xx (and the 2xx of other forks) still reach the TU,
which must ACK each, until Timer M; before RFC 6026 the transaction ended
at the first 2xx and the retransmissions arrived as strays.

A CANCEL (§9.1) is a separate non-INVITE transaction with the INVITE's
branch. It may only be sent after a provisional response, so a CANCEL the TU
asks for in Calling waits for the first 1xx (``SEND_PENDING_CANCEL``) and is
dropped if a final response comes first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, TypeVar

from pbx.sip.errors import LocalProtocolError
from pbx.sip.events import ResponseReceived
from pbx.sip.message import Headers, Request, Response
from pbx.sip.timers import Timer
from pbx.sip.transaction_base import (
    Action,
    Input,
    Table,
    TimerPlan,
    Transaction,
    TransactionState,
    response_input,
)

if TYPE_CHECKING:
    from pbx.sip.transaction import TransactionLayer

A = TypeVar("A")

S = TransactionState
I = Input  # noqa: E741 - short names keep the tables readable
Do = Action


class ClientTransaction(Transaction[A]):
    """What both client machines share: the request bytes and the responses seen."""

    __slots__ = ("_data", "last_response")

    def __init__(
        self,
        layer: TransactionLayer[A],
        key: str,
        request: Request,
        peer: A,
        reliable: bool,
        data: bytes,
    ) -> None:
        super().__init__(layer, key, request, peer, reliable)
        self._data = data  # serialised once; every retransmission re-sends these bytes
        self.last_response: Response | None = None
        """The last response passed to the TU."""

    def _start(self, now: float) -> None:
        self._send_request()  # "INVITE from TU / INVITE sent", "Request from TU / send request"
        super()._start(now)

    def _receive_response(self, response: Response, now: float) -> None:
        self._apply(response_input(response.status), now, response)

    def _send_request(self) -> None:
        self._layer._transmit(self._data, self.peer, self)

    def _pass_up(self, message: Request | Response | None, source: A | None) -> None:
        assert isinstance(message, Response)
        self.last_response = message
        self._layer._emit(ResponseReceived(transaction=self, response=message))


class ClientInviteTransaction(ClientTransaction[A]):
    """RFC 3261 Figure 5 as amended by RFC 6026 Figure 5."""

    INITIAL_STATE = S.CALLING
    RETRANSMIT_TIMER = Timer.A
    TIMERS: ClassVar[TimerPlan] = {
        S.CALLING: (Timer.A, Timer.B),
        S.COMPLETED: (Timer.D,),
        S.ACCEPTED: (Timer.M,),
    }
    TABLE: ClassVar[Table] = {
        (S.CALLING, I.TIMER_A): (S.CALLING, (Do.SEND_REQUEST, Do.BACK_OFF)),
        (S.CALLING, I.TIMER_B): (S.TERMINATED, (Do.REPORT_TIMEOUT,)),
        (S.CALLING, I.PROVISIONAL): (S.PROCEEDING, (Do.PASS_UP, Do.SEND_PENDING_CANCEL)),
        (S.CALLING, I.SUCCESS): (S.ACCEPTED, (Do.PASS_UP,)),
        (S.CALLING, I.FAILURE): (S.COMPLETED, (Do.SEND_ACK, Do.PASS_UP)),
        (S.CALLING, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, (Do.PASS_UP,)),
        (S.PROCEEDING, I.SUCCESS): (S.ACCEPTED, (Do.PASS_UP,)),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, (Do.SEND_ACK, Do.PASS_UP)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        # Retransmissions of the final response: ACK again, the TU has it already.
        (S.COMPLETED, I.FAILURE): (S.COMPLETED, (Do.SEND_ACK,)),
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.COMPLETED, I.TIMER_D): (S.TERMINATED, ()),
        # RFC 6026 §7.2: every 2xx goes to the TU, which ACKs each one.
        (S.ACCEPTED, I.SUCCESS): (S.ACCEPTED, (Do.PASS_UP,)),
        (S.ACCEPTED, I.TIMER_M): (S.TERMINATED, ()),
    }

    __slots__ = ("_ack_data", "_cancel", "_cancel_requested")

    def __init__(
        self,
        layer: TransactionLayer[A],
        key: str,
        request: Request,
        peer: A,
        reliable: bool,
        data: bytes,
    ) -> None:
        super().__init__(layer, key, request, peer, reliable, data)
        self._ack_data: bytes | None = None
        self._cancel_requested = False
        self._cancel: ClientNonInviteTransaction[A] | None = None

    @property
    def cancel_requested(self) -> bool:
        """The TU asked to CANCEL this INVITE (sent now or on the first 1xx)."""
        return self._cancel_requested

    @property
    def cancel_transaction(self) -> ClientNonInviteTransaction[A] | None:
        """The CANCEL's own client transaction, once it was sent."""
        return self._cancel

    def _send_ack(self, message: Request | Response | None) -> None:
        if self._ack_data is None:
            assert isinstance(message, Response)
            self._ack_data = build_ack(self.request, message).to_bytes()
        # §17.1.1.3: to the same address, port and transport as the INVITE.
        self._layer._transmit(self._ack_data, self.peer, self)

    def _send_pending_cancel(self, now: float) -> None:
        if self._cancel_requested and self._cancel is None:
            self._cancel = self._layer._send_cancel(self, now)


class ClientNonInviteTransaction(ClientTransaction[A]):
    """RFC 3261 Figure 6."""

    INITIAL_STATE = S.TRYING
    RETRANSMIT_TIMER = Timer.E
    TIMERS: ClassVar[TimerPlan] = {
        S.TRYING: (Timer.E, Timer.F),
        S.PROCEEDING: (Timer.E, Timer.F),  # both keep running from Trying
        S.COMPLETED: (Timer.K,),
    }
    TABLE: ClassVar[Table] = {
        (S.TRYING, I.TIMER_E): (S.TRYING, (Do.SEND_REQUEST, Do.BACK_OFF)),
        (S.TRYING, I.TIMER_F): (S.TERMINATED, (Do.REPORT_TIMEOUT,)),
        (S.TRYING, I.PROVISIONAL): (S.PROCEEDING, (Do.PASS_UP,)),
        (S.TRYING, I.SUCCESS): (S.COMPLETED, (Do.PASS_UP,)),
        (S.TRYING, I.FAILURE): (S.COMPLETED, (Do.PASS_UP,)),
        (S.TRYING, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.PROCEEDING, I.TIMER_E): (S.PROCEEDING, (Do.SEND_REQUEST, Do.RETRY_AT_T2)),
        (S.PROCEEDING, I.TIMER_F): (S.TERMINATED, (Do.REPORT_TIMEOUT,)),
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, (Do.PASS_UP,)),
        (S.PROCEEDING, I.SUCCESS): (S.COMPLETED, (Do.PASS_UP,)),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, (Do.PASS_UP,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        # Completed absorbs response retransmissions until Timer K.
        (S.COMPLETED, I.TIMER_K): (S.TERMINATED, ()),
    }

    __slots__ = ()


# ------------------------------------------------------------ building requests


def _header(request: Request, name: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise LocalProtocolError(f"{request.method} without {name}: cannot build ACK/CANCEL")
    return value


def _top_via_text(request: Request) -> str:
    """The top Via value as written (only the first value when a line holds several)."""
    line = _header(request, "via")
    return line if "," not in line else str(request.top_via)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From and the CSeq number are the INVITE's, the
    To is the response's (with its tag), the only Via is the INVITE's top
    Via (so the ACK has the INVITE's branch and matches its server
    transaction), and the Route headers are the INVITE's: the ACK takes the
    same path as far as the INVITE went.
    """
    entries: list[tuple[str, str]] = [
        ("Via", _top_via_text(invite)),
        ("Max-Forwards", "70"),
        ("From", _header(invite, "from")),
        ("To", response.headers.get("to") or _header(invite, "to")),
        ("Call-ID", _header(invite, "call-id")),
        ("CSeq", f"{invite.cseq.number} ACK"),
    ]
    entries.extend(("Route", route) for route in invite.headers.get_all("route"))
    return Request("ACK", invite.uri, Headers(entries))


def build_cancel(invite: Request) -> Request:
    """A CANCEL for `invite` (RFC 3261 §9.1).

    Request-URI, Call-ID, From, To and the CSeq number are the INVITE's, as
    is the single Via (same branch, so the server can find the INVITE, and
    the CANCEL takes the INVITE's path hop by hop) and the Route headers.
    """
    entries: list[tuple[str, str]] = [
        ("Via", _top_via_text(invite)),
        ("Max-Forwards", "70"),
        ("From", _header(invite, "from")),
        ("To", _header(invite, "to")),
        ("Call-ID", _header(invite, "call-id")),
        ("CSeq", f"{invite.cseq.number} CANCEL"),
    ]
    entries.extend(("Route", route) for route in invite.headers.get_all("route"))
    return Request("CANCEL", invite.uri, Headers(entries))
