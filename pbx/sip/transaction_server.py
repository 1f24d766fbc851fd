"""Server transactions: RFC 3261 §17.2 (Figures 7 and 8) with RFC 6026 §7.1.

Theory of operation
-------------------
A server transaction receives one request, hands it to the TU once, and
sends the TU's responses back to where the request came from. Its job is to
hide the network's retransmissions from the TU:

* A retransmitted request is answered with the last response sent, or
  absorbed if there is none yet (§17.2.1, §17.2.2). Nothing goes up.
* An INVITE gets 100 Trying from the transaction itself if the TU has not
  answered within 200 ms (§17.2.1, ``TimerSettings.send_trying_after_s``),
  so the client stops retransmitting while the TU thinks.
* A non-2xx final response to an INVITE is retransmitted by the
  transaction over UDP, on Timer G (T1 doubling up to T2), until the ACK
  arrives (Completed -> Confirmed, ACK absorbed) or Timer H gives up and
  reports `TransactionTimedOut`. Confirmed then soaks up ACK
  retransmissions for Timer I.
* A 2xx to an INVITE is *not* retransmitted by the transaction: the dialog
  layer does that (§13.3.1.4) until it sees the ACK, through
  ``TransactionLayer.respond`` while the transaction is in Accepted (RFC
  6026 §7.1). Accepted absorbs INVITE retransmissions (the TU already has
  the INVITE and is retransmitting its 2xx anyway), passes up an ACK that
  matches it, and ends with Timer L.
* A non-INVITE final response is re-sent for each request retransmission
  until Timer J (64*T1 over UDP, zero over reliable transports, where there
  are no retransmissions to absorb).

RFC 6026 Figure 7 keeps a server INVITE transaction alive on a transport
error (it informs the TU and stays): the response may still get through by
another route (§18.2.2), and the timers end it anyway. The non-INVITE
server transaction still terminates, as in RFC 3261 Figure 8.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, TypeVar

from pbx.sip.errors import LocalProtocolError
from pbx.sip.events import AckReceived
from pbx.sip.message import Request, Response, make_response
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


class ServerTransaction(Transaction[A]):
    """What both server machines share: the last response, kept as bytes to re-send."""

    __slots__ = ("_response_data", "last_response")

    def __init__(
        self,
        layer: TransactionLayer[A],
        key: str,
        request: Request,
        peer: A,
        reliable: bool,
    ) -> None:
        super().__init__(layer, key, request, peer, reliable)
        self._response_data: bytes | None = None
        self.last_response: Response | None = None
        """The last response sent (by the TU, or the automatic 100 Trying)."""

    def _receive_request(self, now: float) -> None:
        self._apply(Input.REQUEST, now)

    def _respond(self, response: Response, now: float) -> None:
        if not 100 <= response.status <= 699:
            raise LocalProtocolError(f"status {response.status} is not 100-699")
        if not self._apply(response_input(response.status), now, response):
            raise LocalProtocolError(
                f"{type(self).__name__} in {self._state.value} cannot send a "
                f"{response.status} (RFC 3261 §17.2)")

    def _send_response(self, message: Request | Response | None) -> None:
        assert isinstance(message, Response)
        self.last_response = message
        self._response_data = message.to_bytes()
        self._layer._timer_queue.cancel(self, Timer.TRYING)  # the TU answered in time
        self._layer._transmit(self._response_data, self.peer, self)

    def _resend_response(self) -> None:
        if self._response_data is not None:
            self._layer._transmit(self._response_data, self.peer, self)


class ServerInviteTransaction(ServerTransaction[A]):
    """RFC 3261 Figure 7 as amended by RFC 6026 Figure 7."""

    INITIAL_STATE = S.PROCEEDING
    RETRANSMIT_TIMER = Timer.G
    TIMERS: ClassVar[TimerPlan] = {
        S.PROCEEDING: (Timer.TRYING,),
        S.COMPLETED: (Timer.G, Timer.H),
        S.CONFIRMED: (Timer.I,),
        S.ACCEPTED: (Timer.L,),
    }
    TABLE: ClassVar[Table] = {
        (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (Do.RESEND_RESPONSE,)),
        (S.PROCEEDING, I.TIMER_TRYING): (S.PROCEEDING, (Do.SEND_TRYING,)),
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.SUCCESS): (S.ACCEPTED, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.PROCEEDING, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.COMPLETED, I.REQUEST): (S.COMPLETED, (Do.RESEND_RESPONSE,)),
        (S.COMPLETED, I.ACK): (S.CONFIRMED, ()),
        (S.COMPLETED, I.TIMER_G): (S.COMPLETED, (Do.RESEND_RESPONSE, Do.BACK_OFF)),
        (S.COMPLETED, I.TIMER_H): (S.TERMINATED, (Do.REPORT_TIMEOUT,)),
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.COMPLETED, (Do.REPORT_TRANSPORT_ERROR,)),
        # Confirmed absorbs INVITE and ACK retransmissions until Timer I.
        (S.CONFIRMED, I.TIMER_I): (S.TERMINATED, ()),
        # RFC 6026 §7.1: INVITE retransmissions absorbed, ACKs and 2xx pass.
        (S.ACCEPTED, I.ACK): (S.ACCEPTED, (Do.PASS_UP,)),
        (S.ACCEPTED, I.SUCCESS): (S.ACCEPTED, (Do.SEND_RESPONSE,)),
        (S.ACCEPTED, I.TRANSPORT_ERROR): (S.ACCEPTED, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.ACCEPTED, I.TIMER_L): (S.TERMINATED, ()),
    }

    __slots__ = ()

    def _receive_ack(self, ack: Request, source: A, now: float) -> None:
        self._apply(Input.ACK, now, ack, source)

    def _send_trying(self) -> None:
        # §8.2.6.1: 100 Trying copies Timestamp and has no To tag (make_response does both).
        self._send_response(make_response(self.request, 100))

    def _pass_up(self, message: Request | Response | None, source: A | None) -> None:
        assert isinstance(message, Request) and source is not None
        self._layer._emit(AckReceived(request=message, source=source, transaction=self))


class ServerNonInviteTransaction(ServerTransaction[A]):
    """RFC 3261 Figure 8.

    Once its final response is out over UDP, all Completed does is re-send
    that response's bytes until Timer J (64*T1: 32 s). The layer keeps
    exactly that as a tombstone and lets the object go (see
    `pbx.sip.transaction`): a registrar at thousands of REGISTERs a second
    would otherwise hold tens of thousands of transactions with their
    requests. Over a reliable transport Timer J is zero and the transaction
    ends at once anyway.
    """

    INITIAL_STATE = S.TRYING
    TIMERS: ClassVar[TimerPlan] = {S.COMPLETED: (Timer.J,)}
    TABLE: ClassVar[Table] = {
        # Trying absorbs request retransmissions: there is nothing to re-send yet.
        (S.TRYING, I.PROVISIONAL): (S.PROCEEDING, (Do.SEND_RESPONSE,)),
        (S.TRYING, I.SUCCESS): (S.COMPLETED, (Do.SEND_RESPONSE,)),
        (S.TRYING, I.FAILURE): (S.COMPLETED, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (Do.RESEND_RESPONSE,)),
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.SUCCESS): (S.COMPLETED, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, (Do.SEND_RESPONSE,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.COMPLETED, I.REQUEST): (S.COMPLETED, (Do.RESEND_RESPONSE,)),
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (Do.REPORT_TRANSPORT_ERROR,)),
        (S.COMPLETED, I.TIMER_J): (S.TERMINATED, ()),
    }

    __slots__ = ()

    def _enter(self, state: TransactionState, now: float) -> None:
        data = self._response_data
        if (state is TransactionState.COMPLETED and not self.reliable and data is not None
                and self._layer.max_tombstones):
            for timer in list(self._timers):
                self._layer._timer_queue.cancel(self, timer)
            self._state = state
            self._layer._entomb(self, data, now)
            return
        super()._enter(state, now)
