"""One call through the back-to-back user agent: an A-leg and its B-legs.

Theory of operation
-------------------
The PBX answers the caller as a UAS (the *A-leg*) and calls each target as
a UAC (the *B-legs*), each leg its own dialog with its own Call-ID, tags,
CSeq space, Via and Contact [sippy ``b2bua.py``: one state per leg, a call
controller relaying between them]. `B2buaCall` is that controller. It does no
I/O: it talks to the endpoint through `CallServices`, and the endpoint
feeds it what the transaction layer reports, through the `ResponseOwner`
each request it sent carries.

Life of a call::

    INVITE ──> ROUTING ── dial() ──> DIALING ── 2xx ──> ANSWERED ── BYE ──> ENDED
                  │                    │ all failed / timeout / CANCEL      ▲
                  └── reject() ────────┴────────────────────────────────────┘

- Dialing sends the A-leg's offer to every target at once (forking) and
  passes provisional responses back (180, 183 with early-media SDP). The
  first 2xx wins: it is ACKed, the caller gets a 200 with its SDP, the
  other branches are CANCELed, and a late 2xx from one of them is ACKed and
  BYEd (RFC 3261 §16.7 step 7 as a B2BUA does it).
- A dial ends with a `DialOutcome` for the dialplan: answered, or the best
  final response of the branches by the rules of §16.7 step 6; the dialplan
  decides what happens next. When it decides nothing, `finish` answers the
  caller with that best response.
- CANCEL from the caller cancels every branch; the caller gets 487.
- Once answered, BYE from either side ends both; re-INVITE, UPDATE, INFO
  and MESSAGE are relayed to the other leg and their final answers relayed
  back. A second re-INVITE while one is in progress gets 491 (glare,
  §14.1). A relayed request answered 408 or 481, or never answered, ends
  the call on both sides (§12.2.1.2).
- The caller's 2xx is retransmitted until its ACK arrives (§13.3.1.4,
  RFC 6026), over unreliable transports; no ACK within 64*T1 ends the call.
- Every session description that crosses from one leg to the other (the
  offer to each branch, early media, the answer, re-INVITE and UPDATE both
  ways, a late offer's 2xx and ACK) goes through the call's media session
  when it has one (`pbx.media.seam`, `pbx.core.media`): what it returns is
  what the other leg gets. It hears which branch won and which ended, and
  is released exactly once, in `_end`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.logger import Logger

from pbx.core.media import CallMedia
from pbx.core.owners import ResponseOwner
from pbx.core.provisional import CallerProvisionals
from pbx.core.session import LegTimer
from pbx.media.seam import Crossing, MediaLeg, MediaRefused
from pbx.sip.dialog import Dialog, DialogState
from pbx.sip.errors import SipParseError
from pbx.sip.headers import quote_string
from pbx.sip.message import Headers, Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.reliable import requires_100rel
from pbx.sip.session_timer import (
    SessionTimer,
    SessionTimerDecision,
    negotiate_uac_response,
    uac_request_headers,
)
from pbx.sip.transaction import ClientInviteTransaction, ClientTransaction, ServerTransaction
from pbx.sip.uri import parse_request_uri

_log = Logger(namespace="pbx.core.call")

RELAYED_METHODS = frozenset({"INVITE", "UPDATE", "INFO", "MESSAGE"})
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, MESSAGE, PRACK"
# Headers that describe the body travel with it from one leg to the other.
_BODY_HEADERS = ("content-type", "content-disposition", "content-encoding", "content-language")


class Cancellable(Protocol):
    def cancel(self) -> None: ...

    def active(self) -> bool: ...


class CallServices(Protocol):
    """What a call needs from the endpoint: time, sending, tags, addresses."""

    def now(self) -> float: ...

    @property
    def domain(self) -> str: ...

    def respond(self, transaction: ServerTransaction[Peer], response: Response) -> None: ...

    def send_request(self, request: Request, peer: Peer,
                     owner: ResponseOwner) -> ClientTransaction[Peer] | None: ...

    def send_ack(self, request: Request, peer: Peer) -> None: ...

    def cancel(self, transaction: ClientInviteTransaction[Peer]) -> None: ...

    def call_later(self, delay_s: float, work: Callable[[], None]) -> Cancellable: ...

    def via_for(self, peer: Peer) -> str:
        """A top Via for a request to `peer`, with a fresh branch and ``rport``."""

    def contact_for(self, peer: Peer, user: str | None) -> str:
        """Our Contact (a name-addr) as seen from `peer`."""

    def new_tag(self) -> str: ...

    def new_call_id(self) -> str: ...

    def register_dialog(self, dialog: Dialog, leg: Leg) -> None: ...

    def forget_dialog(self, dialog: Dialog) -> None: ...

    def call_ended(self, call: B2buaCall) -> None: ...

    # pluginapi: call-state events for plugins (busy lamps); ENDED is `call_ended`.
    def callee_ringing(self, call: B2buaCall, callee: str) -> None: ...

    def callee_answered(self, call: B2buaCall, callee: str) -> None: ...

    @property
    def t1_s(self) -> float: ...

    @property
    def t2_s(self) -> float: ...


class CallState(enum.Enum):
    ROUTING = enum.auto()
    DIALING = enum.auto()
    ANSWERED = enum.auto()
    ENDED = enum.auto()


@dataclass(frozen=True, slots=True)
class Target:
    """Where one branch goes: the Request-URI and the address to send it to."""

    request_uri: str
    peer: Peer
    label: str
    """Who this is, for the CDR and the logs: "1002", or the URI dialed."""
    to_uri: str | None = None
    """The To of the B-leg; by default the Request-URI."""


@dataclass(frozen=True, slots=True)
class DialOutcome:
    """How one dial ended: the winning target, or the best final status."""

    answered_by: str | None
    status: int
    reason: str

    @property
    def answered(self) -> bool:
        return self.answered_by is not None


class Leg:
    """What the two kinds of leg share: a peer, a dialog once there is one.

    ``call`` is None once the call has ended and let go of this leg (see
    `B2buaCall._release`): a leg outlives its call only as the owner of a
    request still in flight.
    """

    __slots__ = ("call", "dialog", "last_sdp", "media", "peer", "timer")

    side = "?"

    def __init__(self, call: B2buaCall, peer: Peer) -> None:
        self.call: B2buaCall | None = call
        self.peer = peer
        self.dialog: Dialog | None = None
        self.timer: LegTimer | None = None
        """RFC 4028 on this leg, once answered (`pbx.core.session`)."""
        self.last_sdp = b""
        """The session description the PBX last sent on this leg, when a session
        refresh of ours may have to repeat it (`sent_sdp`)."""
        self.media: MediaLeg | None = None
        """This leg as the call's media session sees it (None: the call has none)."""

    def sent_sdp(self, body: bytes) -> None:
        """The PBX sent `body` on this leg: kept if this leg is refreshed by the PBX."""
        timer = self.timer
        self.last_sdp = body if timer is not None and timer.we_refresh else b""


class ALeg(Leg):
    """The caller's side: we are the UAS of its INVITE.

    The INVITE, its server transaction and our 2xx are needed until the
    caller's ACK (the 2xx is retransmitted until then, §13.3.1.4); after
    that the dialog is all the call needs, and they are let go
    (`set_up`): an active call holds no parsed messages.
    """

    __slots__ = ("_answered_at", "_invite", "_retransmit", "_retransmit_interval",
                 "_transaction", "answer", "final_sent", "local_tag")

    side = "caller"

    def __init__(self, call: B2buaCall, transaction: ServerTransaction[Peer], invite: Request,
                 peer: Peer, local_tag: str) -> None:
        super().__init__(call, peer)
        self._transaction: ServerTransaction[Peer] | None = transaction
        self._invite: Request | None = invite
        self.local_tag = local_tag
        self.final_sent = False
        self.answer: Response | None = None
        self._retransmit: Cancellable | None = None
        self._retransmit_interval = 0.0
        self._answered_at = 0.0

    @property
    def invite(self) -> Request:
        """The caller's INVITE, until the call is set up (`set_up`)."""
        if self._invite is None:
            raise LookupError("the caller's INVITE is let go once its ACK has arrived")
        return self._invite

    @property
    def transaction(self) -> ServerTransaction[Peer]:
        """The INVITE's server transaction, until the call is set up (`set_up`)."""
        if self._transaction is None:
            raise LookupError("the caller's INVITE transaction is let go once its ACK has arrived")
        return self._transaction

    @property
    def is_set_up(self) -> bool:
        return self._invite is None

    def set_up(self) -> None:
        """The ACK for our 2xx arrived (or the call ended): let go of the set-up."""
        if self._retransmit is not None and self._retransmit.active():
            self._retransmit.cancel()
        self._retransmit = None
        self._retransmit_interval = self._answered_at = 0.0
        self._invite = None
        self._transaction = None
        self.answer = None


class BLeg(Leg):
    """One branch: we are the UAC of its INVITE (and the owner of its responses).

    The INVITE and its client transaction are needed while the transaction
    lasts: to CANCEL it, to build the dialog of a 2xx, to ACK a
    retransmitted 2xx again (from the dialog, with the Via and body of the
    first ACK: the same message, not kept as one). When it is over
    (`on_ended`) they are let go; the dialog is all an answered leg needs.
    """

    __slots__ = ("_invite", "ack_sent", "cancelled", "early_dialogs", "final_reason",
                 "final_status", "invite_cseq", "resend_ack", "target", "transaction")

    side = "callee"

    def __init__(self, call: B2buaCall, target: Target, invite: Request) -> None:
        super().__init__(call, target.peer)
        self.target = target
        self._invite: Request | None = invite
        self.invite_cseq = invite.cseq.number
        self.transaction: ClientTransaction[Peer] | None = None
        self.final_status: int | None = None
        self.final_reason = ""
        self.cancelled = False
        self.ack_sent = False
        """Our ACK for its 2xx went out (with a late offer, only once the caller's came)."""
        self.resend_ack: tuple[str, bytes, str | None] | None = None
        """Via, body and Content-Type of that ACK, while a retransmitted 2xx may come."""
        self.early_dialogs: dict[str, Dialog] | None = None
        """The callee's early dialogs by To tag, while it rings."""

    @property
    def invite(self) -> Request:
        """Our INVITE, while its transaction lasts."""
        if self._invite is None:
            raise LookupError("the INVITE of a branch is let go once its transaction is over")
        return self._invite

    # ResponseOwner of the INVITE

    def on_response(self, response: Response) -> None:
        call = self.call
        if call is None:
            return
        try:
            call._b_response(self, response)
        except SipParseError as error:
            # A header the call needs (the Contact of a dialog) does not parse:
            # this branch failed, as a proxy says of a downstream server that
            # answered nonsense (502, RFC 3261 §21.5.3); the others go on.
            _log.warn("Call {call_id}: bad {status} from {target}: {reason}; the branch "
                      "failed (502)", call_id=call.record.call_id, status=response.status,
                      target=self.target.label, reason=error.reason)
            call._b_failed(self, 502, "Bad response from the callee")

    def on_failure(self, status: int) -> None:
        if self.call is None:
            return
        if status == 408:
            self.call._b_failed(self, 408, "Request Timeout")
        else:
            # Could not even be sent (a connection refused): the phone is away.
            self.call._b_failed(self, 480, "Unreachable")

    def on_ended(self) -> None:
        """The INVITE transaction is over: no response can come any more."""
        self._invite = None
        self.transaction = None
        self.resend_ack = None
        self.early_dialogs = None
        if self.dialog is None:
            self.call = None  # a branch that never answered: nothing more to do


@dataclass(slots=True)
class _Relay:
    """An in-dialog request relayed from one leg to the other (ResponseOwner)."""

    call: B2buaCall
    source: Leg
    transaction: ServerTransaction[Peer]
    request: Request
    destination: Leg
    sent: Request | None = None
    offer: Crossing | None = None
    """How its offer crossed the media session, if it carried one."""
    ack: tuple[bytes, str | None] | None = None
    """Body and Content-Type of our ACK for a 2xx that carried an offer (the request
    had none): the answer the source's ACK brought, sent again if the 2xx is."""

    def on_response(self, response: Response) -> None:
        self.call._relay_response(self, response)

    def on_failure(self, status: int) -> None:
        self.call._relay_failed(self, status)

    def on_ended(self) -> None:
        return None


@dataclass(slots=True)
class _Bye:
    """The BYE we send to end a leg; its answer only matters for the logs."""

    def on_response(self, response: Response) -> None:
        return None

    def on_failure(self, status: int) -> None:
        return None

    def on_ended(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class CallDetailRecord:
    """A finished call, as stored: one row of the ``cdr`` table, fields in its column order.

    `pbx.store.CDR_COLUMNS` names the same fields in the same order (a test
    holds them together); `row` is what the store's insert takes.
    """

    call_id: str
    caller: str
    caller_name: str | None
    dialed: str
    targets: str  # JSON list of what was tried, in order
    answered_by: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    duration_s: float  # answer to end; 0 for a call nobody answered
    hangup_by: str | None  # "caller", "callee" or "pbx"
    status: int  # 200 for an answered call, else the caller's final status
    reason: str | None

    def row(self) -> tuple[object, ...]:
        """The values in column order, for an INSERT."""
        return (self.call_id, self.caller, self.caller_name, self.dialed, self.targets,
                self.answered_by, self.started_at, self.answered_at, self.ended_at,
                self.duration_s, self.hangup_by, self.status, self.reason)


@dataclass(slots=True)
class CallRecord:
    """What is known of a call as it goes; `finished` makes its `CallDetailRecord`."""

    call_id: str
    caller: str
    caller_name: str | None
    dialed: str
    started_at: float
    answered_at: float | None = None
    ended_at: float | None = None
    targets: list[str] = field(default_factory=list)
    answered_by: str | None = None
    hangup_by: str | None = None  # "caller", "callee", "pbx"
    status: int | None = None
    reason: str | None = None

    def finished(self) -> CallDetailRecord:
        """The record to store, once the call has ended."""
        duration = 0.0
        if self.answered_at is not None and self.ended_at is not None:
            duration = round(self.ended_at - self.answered_at, 3)
        return CallDetailRecord(
            call_id=self.call_id, caller=self.caller, caller_name=self.caller_name,
            dialed=self.dialed, targets=json.dumps(self.targets),
            answered_by=self.answered_by, started_at=self.started_at,
            answered_at=self.answered_at, ended_at=self.ended_at, duration_s=duration,
            hangup_by=self.hangup_by,
            status=200 if self.answered_at is not None else (self.status or 480),
            reason=self.reason)


class B2buaCall:
    """The controller of one call (see the module docstring).

    Memory: every phone in the office may be in a call at once, so an
    answered call keeps only what its dialogs need (no parsed messages,
    no transactions: see `ALeg` and `BLeg`), and an ended one breaks its
    reference cycles (`_release`), so that it is freed as soon as the last
    request it sent is over, without waiting for the cyclic collector.
    """

    __slots__ = ("__weakref__", "_best", "_caller_timer", "_dial_done", "_dial_timer",
                 "_extra_headers", "_final", "_late_answer", "_on_end", "_pending_relays",
                 "a", "b_legs",
                 "connected", "media", "provisionals", "record", "services", "state")

    def __init__(self, services: CallServices, *, transaction: ServerTransaction[Peer],
                 invite: Request, peer: Peer, caller: str, caller_name: str | None,
                 dialed: str, session_timer: SessionTimerDecision | None = None,
                 media: CallMedia | None = None) -> None:
        self.services = services
        self.media = media
        """The call's media session, which every body crossing between legs goes
        through (`pbx.media.seam`); None: they cross unchanged."""
        self._caller_timer = session_timer
        self.state = CallState.ROUTING
        self.a = ALeg(self, transaction, invite, peer, services.new_tag())
        if media is not None:
            self.a.media = media.caller
        self.b_legs: list[BLeg] = []
        self.connected: BLeg | None = None
        self.record = CallRecord(call_id=invite.call_id, caller=caller,
                                 caller_name=caller_name, dialed=dialed,
                                 started_at=services.now())
        self._dial_done: Callable[[DialOutcome], None] | None = None
        self._dial_timer: Cancellable | None = None
        self._best: tuple[int, str] | None = None
        """The best final response of the branches of the dial in progress."""
        self._final: tuple[int, str, bool] | None = None
        """The best outcome of all the dials so far (status, reason, given by a
        callee): what the caller gets if the dialplan decides nothing more."""
        self._pending_relays: dict[int, _Relay] | None = None
        self._late_answer: _Relay | None = None
        """A relayed re-INVITE without SDP whose 2xx carried an offer: our ACK for
        that 2xx waits for the answer in the source's ACK (RFC 3261 §13.2.1)."""
        self._on_end: list[Callable[[], None]] | None = None
        self.provisionals = CallerProvisionals(self) if requires_100rel(invite) else None
        """Reliable provisionals (RFC 3262), for a caller that requires them."""
        self._extra_headers: tuple[tuple[str, str], ...] = ()

    # ---------------------------------------------------------- dialplan side

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    def when_ended(self, work: Callable[[], None]) -> None:
        """Run `work` once the call has ended (the dialplan's CallEnded)."""
        if self.ended:
            work()
        elif self._on_end is None:
            self._on_end = [work]
        else:
            self._on_end.append(work)

    def dial(self, targets: Sequence[Target], timeout_s: float,
             done: Callable[[DialOutcome], None],
             extra_headers: Sequence[tuple[str, str]] = ()) -> None:
        """Ring every target at once; `done` gets the outcome exactly once.

        ``extra_headers`` go into every INVITE of this dial (the dialplan's
        ``call.outgoing_headers``).
        """
        if self.state is not CallState.ROUTING:
            raise RuntimeError(f"cannot dial in state {self.state.name}")
        self._extra_headers = tuple(extra_headers)
        self.state = CallState.DIALING
        self._dial_done = done
        self._best = None
        self.b_legs = []
        media = self.media
        if media is None:
            body = self.a.invite.body
            for target in targets:
                self._start_branch(target, body, None)
        else:
            offers = self._offers(media, targets)
            if offers is None:
                return  # refused: the call is over
            for target, (body, view) in zip(targets, offers, strict=True):
                self._start_branch(target, body, view)
        if not any(leg.final_status is None for leg in self.b_legs):
            self._dial_finished()
            return
        self._dial_timer = self.services.call_later(timeout_s, self._dial_timeout)

    def reject(self, status: int, reason: str | None = None,
               headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer the caller with a final non-2xx and end the call."""
        if self.ended or self.a.final_sent:
            return
        self._final_to_caller(status, reason, headers)
        self._end(hangup_by="pbx", status=status, reason=reason)

    def nobody_to_ring(self) -> None:
        """The dialplan dialed a user with no phone registered: 480, for `finish`."""
        self._keep_final(480, "Temporarily Unavailable", by_callee=False)

    def finish(self) -> None:
        """The dialplan returned: a call nobody answered gets its best final response.

        The best of every dial's outcome (§16.7 step 6 over the whole call,
        not only the last dial): a busy callee and then a forward nobody
        answered is busy for the caller.
        """
        if self.ended or self.state is CallState.ANSWERED:
            return
        status, reason, by_callee = self._final or (480, "Temporarily Unavailable", False)
        if status == 503:
            # §16.7 step 6: the callee's (or its transport's) overload is not ours.
            status, reason = 500, "Server Internal Error"
        if self.a.final_sent:
            return
        self._final_to_caller(status, reason, ())
        self._end(hangup_by="callee" if by_callee else "pbx", status=status, reason=reason)

    def give_up(self, status: int, reason: str) -> None:
        """The PBX cannot carry on with this call: branches cancelled, the caller told."""
        if self.ended:
            return
        if self.state is CallState.ANSWERED:
            self.hangup()
            return
        self._cancel_branches()
        self._stop_dial_timer()
        self.reject(status, reason)

    def hangup(self) -> None:
        """End the call from the PBX's side, whatever its state."""
        if self.ended:
            return
        if self.state is CallState.ANSWERED:
            self._bye(self.a)
            if self.connected is not None:
                self._bye(self.connected)
            self._end(hangup_by="pbx")
            return
        self._cancel_branches()
        self.reject(480, "Temporarily Unavailable")

    # ------------------------------------------------------------- branches

    def _offers(self, media: CallMedia,
                targets: Sequence[Target]) -> list[tuple[bytes, MediaLeg]] | None:
        """The caller's offer as each branch gets it, before any of them rings.

        A refusal (no media ports left, a bad offer) ends the call with
        503, or the status it names, and nothing is sent to any branch.
        """
        a = self.a
        body = a.invite.body
        content_type = a.invite.headers.get("content-type") if body else None
        first = len(self.record.targets)
        offers = []
        for number, target in enumerate(targets, first):
            view = media.branch(number, target.label, target.peer)
            sent = body
            if body:
                assert a.media is not None
                crossing = Crossing(source=a.media, destination=view, method="INVITE",
                                    initial=True)
                try:
                    sent = media.offer_in_request(body, content_type, crossing)
                except MediaRefused as refusal:
                    self.give_up(refusal.status or 503, refusal.reason)
                    return None
            offers.append((sent, view))
        return offers

    def _start_branch(self, target: Target, body: bytes, view: MediaLeg | None) -> None:
        services = self.services
        a_invite = self.a.invite
        peer = target.peer
        name = self.record.caller_name
        display = f"{quote_string(name)} " if name else ""
        caller_uri = f"sip:{self.record.caller}@{services.domain}"
        headers: list[tuple[str, str]] = [
            ("Via", services.via_for(peer)),
            ("Max-Forwards", str(max(0, (a_invite.max_forwards or 70) - 1))),
            ("From", f"{display}<{caller_uri}>;tag={services.new_tag()}"),
            ("To", f"<{target.to_uri or target.request_uri}>"),
            ("Call-ID", services.new_call_id()),
            ("CSeq", "1 INVITE"),
            ("Contact", services.contact_for(peer, self.record.caller)),
            ("Allow", ALLOW),
        ]
        headers.extend(uac_request_headers())  # RFC 4028 §7.1: the callee may pick the refresher
        headers.extend(self._extra_headers)
        headers.extend(_body_headers(a_invite))
        invite = Request("INVITE", parse_request_uri(target.request_uri), Headers(headers),
                         body)
        leg = BLeg(self, target, invite)
        leg.media = view
        self.b_legs.append(leg)
        self.record.targets.append(target.label)
        leg.transaction = services.send_request(invite, peer, leg)
        if leg.transaction is None:
            leg.final_status, leg.final_reason = 503, "Service Unavailable"
            self._consider(503, "Service Unavailable")
            self._branch_ended(leg)

    def _b_response(self, leg: BLeg, response: Response) -> None:
        status = response.status
        if status < 200:
            if status == 100 or self.state is not CallState.DIALING or leg.cancelled:
                return
            self.services.callee_ringing(self, leg.target.label)  # pluginapi
            tag = response.to_addr.tag
            if tag is not None and (leg.early_dialogs is None or tag not in leg.early_dialogs):
                dialog = Dialog.as_uac(leg.invite, response)
                if leg.early_dialogs is None:
                    leg.early_dialogs = {}
                leg.early_dialogs[tag] = dialog
            self._provisional_to_caller(leg, response)
            return
        if 200 <= status < 300:
            self._b_answered(leg, response)
            return
        if leg.final_status is None:
            leg.final_status, leg.final_reason = status, response.reason
            leg.early_dialogs = None
            if not leg.cancelled:  # a 487 we asked for (maybe in an earlier dial)
                self._consider(status, response.reason)
                self._branch_ended(leg)
            self._branch_done()

    def _b_failed(self, leg: BLeg, status: int, reason: str) -> None:
        if leg.final_status is not None:
            return
        leg.final_status, leg.final_reason = status, reason
        if not leg.cancelled:
            self._consider(status, reason)
            self._branch_ended(leg)
        self._branch_done()

    def _b_answered(self, leg: BLeg, response: Response) -> None:
        if leg.dialog is not None:
            # The phone retransmits its 2xx: our ACK was lost (§13.2.2.4), or
            # not sent yet (a late offer: it waits for the caller's answer).
            if leg.resend_ack is not None:
                via, body, content_type = leg.resend_ack
                self.services.send_ack(leg.dialog.ack(
                    leg.invite_cseq, via=via, body=body, content_type=content_type), leg.peer)
            return
        dialog = Dialog.as_uac(leg.invite, response)
        via = self.services.via_for(leg.peer)
        ack = dialog.ack(leg.invite_cseq, via=via)
        # A cancelled branch is one the dial gave up on (it may be an earlier
        # dial's, its 2xx arriving while the dialplan rings someone else).
        if self.state is not CallState.DIALING or leg.cancelled or (
                self.connected is not None and self.connected is not leg) or (
                leg.final_status is not None and leg is not self.connected):
            # A late 2xx from a losing branch: ACK it, then BYE it (§16.7 step 7).
            self.services.send_ack(ack, leg.peer)
            bye = dialog.new_request("BYE", via=self.services.via_for(leg.peer))
            self.services.send_request(bye, leg.peer, _Bye())
            return
        leg.dialog = dialog
        leg.final_status = response.status
        leg.early_dialogs = None
        self.connected = leg
        self.services.register_dialog(dialog, leg)
        if self.a.invite.body:
            leg.ack_sent = True
            leg.resend_ack = (via, b"", None)
            self.services.send_ack(ack, leg.peer)
        # else: a late offer in the 2xx; the caller's ACK carries the answer,
        # and the callee's ACK waits for it (see `_a_ack`).
        self._start_timer(leg, negotiate_uac_response(response), response)
        leg.sent_sdp(leg.invite.body)
        if self.media is not None and leg.media is not None:
            self.media.connected(leg.media)
        self._answer_caller(leg, response)
        self.state = CallState.ANSWERED
        self.record.answered_at = self.services.now()
        self.record.answered_by = leg.target.label
        self.services.callee_answered(self, leg.target.label)  # pluginapi
        self._cancel_branches(except_leg=leg)
        self._stop_dial_timer()
        # The losing branches are owned by their INVITEs' transactions until
        # those are over (a late 2xx is still ACKed and BYEd); the call keeps
        # only the leg it is connected to.
        self.b_legs = [leg]
        self._report(DialOutcome(answered_by=leg.target.label, status=response.status,
                                 reason=response.reason))

    def _consider(self, status: int, reason: str) -> None:
        """Keep the best final response so far (RFC 3261 §16.7 step 6)."""
        if self._best is None or rank_final_status(status) < rank_final_status(self._best[0]):
            self._best = (status, reason)

    def _branch_done(self) -> None:
        if self.state is CallState.DIALING and all(
                leg.final_status is not None for leg in self.b_legs):
            self._dial_finished()

    def _dial_timeout(self) -> None:
        self._dial_timer = None
        if self.state is not CallState.DIALING:
            return
        if self._best is None:
            self._best = (408, "Request Timeout")
        self._cancel_branches()
        self._dial_finished(no_answer=True)

    def _dial_finished(self, *, no_answer: bool = False) -> None:
        self._stop_dial_timer()
        self.state = CallState.ROUTING
        status, reason = self._best or (480, "Temporarily Unavailable")
        if no_answer:
            status, reason = 408, "Request Timeout"
        # A busy or declining phone ended the dial; a timeout or nobody to ring is the PBX.
        by_callee = not no_answer and any(leg.final_status == status for leg in self.b_legs)
        self._keep_final(status, reason, by_callee=by_callee)
        self._report(DialOutcome(answered_by=None, status=status, reason=reason))

    def _keep_final(self, status: int, reason: str, *, by_callee: bool) -> None:
        if self._final is None or rank_final_status(status) < rank_final_status(self._final[0]):
            self._final = (status, reason, by_callee)

    def _report(self, outcome: DialOutcome) -> None:
        done, self._dial_done = self._dial_done, None
        if done is not None:
            done(outcome)

    def _cancel_branches(self, except_leg: BLeg | None = None) -> None:
        for leg in self.b_legs:
            if leg is except_leg or leg.final_status is not None or leg.cancelled:
                continue
            leg.cancelled = True
            self._branch_ended(leg)
            if isinstance(leg.transaction, ClientInviteTransaction):
                self.services.cancel(leg.transaction)

    def _branch_ended(self, leg: BLeg) -> None:
        """`leg` will carry no media (failed, or cancelled: by then it has lost)."""
        if self.media is not None and leg.media is not None:
            self.media.branch_ended(leg.media)

    def _stop_dial_timer(self) -> None:
        if self._dial_timer is not None and self._dial_timer.active():
            self._dial_timer.cancel()
        self._dial_timer = None

    # ------------------------------------------------------------ the caller

    def _provisional_to_caller(self, leg: BLeg, response: Response) -> None:
        if self.a.final_sent:
            return
        body = response.body
        status = 183 if body else response.status
        reason = "Session Progress" if body else response.reason
        if body and self.media is not None:
            body = self._from_callee(leg, response, status)
        reply = make_response(self.a.invite, status, reason, to_tag=self.a.local_tag,
                              headers=[("Contact", self._a_contact()),
                                       *_body_headers(response)], body=body)
        if self.provisionals is None:
            self.services.respond(self.a.transaction, reply)
        else:
            self.provisionals.send(reply)

    def _from_callee(self, leg: BLeg, response: Response, status: int) -> bytes:
        """The body of a branch's 1xx or 2xx to the INVITE, through the media session.

        An answer to the caller's offer; with a late offer (an INVITE
        without SDP), the callee's offer (RFC 3261 §13.2.1).
        """
        media = self.media
        a = self.a
        assert media is not None and leg.media is not None and a.media is not None
        crossing = Crossing(source=leg.media, destination=a.media, method="INVITE",
                            status=status, initial=True)
        content_type = response.headers.get("content-type")
        if a.invite.body:
            return media.answer(response.body, content_type, crossing)
        return media.offer(response.body, content_type, crossing)

    def _answer_caller(self, leg: BLeg, response: Response) -> None:
        a = self.a
        decision = self._caller_timer
        body = response.body
        if body and self.media is not None:
            body = self._from_callee(leg, response, 200)
        reply = make_response(a.invite, 200, "OK", to_tag=a.local_tag, headers=[
            ("Contact", self._a_contact()),
            ("Allow", ALLOW),
            ("Supported", "timer"),
            *(decision.headers() if decision is not None else ()),
            *_body_headers(response),
        ], body=body)
        a.final_sent = True
        a.answer = reply
        self._caller_timer = None
        if self.provisionals is not None:
            self.provisionals.final_sent()
        if a.dialog is None:
            a.dialog = Dialog.as_uas(a.invite, local_tag=a.local_tag,
                                     local_contact=self._a_contact(), early=False)
            self.services.register_dialog(a.dialog, a)
        else:
            a.dialog.confirm()  # the early dialog of our reliable provisionals
        self.services.respond(a.transaction, reply)
        a._answered_at = self.services.now()
        if decision is not None:
            self._start_timer(a, decision.timer, a.invite)
        a.sent_sdp(body)
        if not a.peer.is_reliable:
            a._retransmit_interval = self.services.t1_s
            a._retransmit = self.services.call_later(a._retransmit_interval,
                                                     self._retransmit_answer)
        else:
            a._retransmit = self.services.call_later(64 * self.services.t1_s,
                                                     self._no_ack)

    def _retransmit_answer(self) -> None:
        """§13.3.1.4: the 2xx again at T1, 2*T1, ... capped at T2, until ACK or 64*T1."""
        a = self.a
        a._retransmit = None
        if self.ended or a.answer is None:
            return
        if self.services.now() - a._answered_at >= 64 * self.services.t1_s:
            self._no_ack()
            return
        self.services.respond(a.transaction, a.answer)
        a._retransmit_interval = min(2 * a._retransmit_interval, self.services.t2_s)
        a._retransmit = self.services.call_later(a._retransmit_interval,
                                                 self._retransmit_answer)

    def _no_ack(self) -> None:
        self.a._retransmit = None
        if self.ended:
            return
        if self.connected is not None:
            self._bye(self.connected)
        self._bye(self.a)
        self._end(hangup_by="pbx", status=408, reason="No ACK from the caller")

    def _final_to_caller(self, status: int, reason: str | None,
                         headers: Sequence[tuple[str, str]] = ()) -> None:
        a = self.a
        if a.final_sent:
            return
        a.final_sent = True
        if self.provisionals is not None:
            self.provisionals.final_sent()
        self.services.respond(a.transaction, make_response(
            a.invite, status, reason, to_tag=a.local_tag, headers=headers))

    def _a_contact(self) -> str:
        return self.services.contact_for(self.a.peer, None)

    def ack_received(self, leg: Leg, ack: Request) -> None:
        """An ACK for a 2xx of ours on `leg`: the caller's INVITE's, or a re-INVITE's."""
        if leg is self.a and not self.a.is_set_up:
            self.a_ack(ack)
            return
        relay = self._late_answer
        if relay is None or relay.source is not leg or (
                ack.cseq.number != relay.request.cseq.number):
            return  # nothing waits for it: its transaction took it
        self._late_answer = None
        body = ack.body
        content_type = ack.headers.get("content-type") if body else None
        media = self.media
        if body and media is not None:
            assert leg.media is not None and relay.destination.media is not None
            body = media.answer(body, content_type, Crossing(
                source=leg.media, destination=relay.destination.media, method="ACK",
                initial=False))
        relay.ack = (body, content_type)
        self._ack_late_answer(relay)
        if body:
            relay.destination.sent_sdp(body)

    def a_ack(self, ack: Request) -> None:
        """The caller's ACK for our 2xx (or a re-INVITE's)."""
        a = self.a
        if a.is_set_up or not a.final_sent:
            return  # the ACK for a re-INVITE's 2xx: its transaction took it
        a.set_up()
        leg = self.connected
        if leg is not None and not leg.ack_sent and leg.dialog is not None:
            # Late offer: the callee's ACK carries the caller's answer.
            via = self.services.via_for(leg.peer)
            content_type = ack.headers.get("content-type")
            body = ack.body
            media = self.media
            if body and media is not None:
                assert a.media is not None and leg.media is not None
                body = media.answer(body, content_type, Crossing(
                    source=a.media, destination=leg.media, method="ACK", initial=True))
            leg.ack_sent = True
            if leg.transaction is not None:  # its 2xx may yet be retransmitted
                leg.resend_ack = (via, body, content_type)
            self.services.send_ack(leg.dialog.ack(leg.invite_cseq, via=via, body=body,
                                                  content_type=content_type), leg.peer)
            if body:
                leg.sent_sdp(body)  # what a session refresh of ours repeats

    def caller_cancelled(self) -> None:
        """CANCEL from the caller (its 200 is the endpoint's): 487, branches cancelled."""
        if self.ended or self.a.final_sent:
            return
        self._cancel_branches()
        self._stop_dial_timer()
        self._final_to_caller(487, "Request Terminated")
        self._end(hangup_by="caller", status=487, reason="Request Terminated")

    # ------------------------------------------------------ session timers

    def _start_timer(self, leg: Leg, timer: object, message: Request | Response) -> None:
        """Run `timer` (a negotiated SessionTimer, or anything else for none) on `leg`."""
        if not isinstance(timer, SessionTimer):
            return
        try:
            allows_update = "UPDATE" in message.allow
        except SipParseError:
            allows_update = False
        leg.timer = LegTimer(self, leg, timer, allows_update=allows_update)
        leg.timer.start()

    def session_expired(self, leg: Leg, why: str) -> None:
        """The phone on `leg` is gone (RFC 4028 §10): end the call on both legs."""
        if self.ended:
            return
        for each in (self.a, self.connected):
            if each is not None:
                self._bye(each)
        self._end(hangup_by="pbx", reason=f"session timer: {why} ({leg.side} leg)")

    # --------------------------------------------------- in-dialog requests

    def in_dialog_request(self, leg: Leg, transaction: ServerTransaction[Peer],
                          request: Request) -> None:
        """BYE, re-INVITE, UPDATE, INFO, MESSAGE, OPTIONS, PRACK on an established leg."""
        method = request.method
        dialog = leg.dialog
        assert dialog is not None
        refused = dialog.receive_request(request)
        if refused is not None:
            self.services.respond(transaction, make_response(request, refused))
            return
        if method == "BYE":
            self.services.respond(transaction, make_response(request, 200))
            other = self._other(leg)
            if other is not None:
                self._bye(other)
            self._end(hangup_by=leg.side)
            return
        if method == "PRACK" and leg is self.a:
            # 481 unless it acknowledges our reliable provisional (RFC 3262 §3).
            provisionals = self.provisionals
            self.services.respond(transaction, make_response(request, 481)
                                  if provisionals is None else provisionals.prack(request))
            return
        if method in ("OPTIONS", "PRACK"):
            self.services.respond(transaction, make_response(request, 200))
            return
        if method not in RELAYED_METHODS:
            self.services.respond(transaction, make_response(
                request, 405, headers=[("Allow", ALLOW)]))
            return
        other = self._other(leg)
        if other is None or other.dialog is None or self.state is not CallState.ANSWERED:
            self.services.respond(transaction, make_response(request, 481))
            return
        pending = self._pending_relays
        if pending is None:
            pending = self._pending_relays = {}
        if method in ("INVITE", "UPDATE") and any(
                r.request.method in ("INVITE", "UPDATE") for r in pending.values()):
            # Glare (§14.1): another offer is in progress on this call.
            self.services.respond(transaction, make_response(
                request, 491, headers=[("Retry-After", "1")]))
            return
        body = request.body
        media = self.media
        offer = None
        if body and media is not None and method in ("INVITE", "UPDATE"):
            assert leg.media is not None and other.media is not None
            offer = Crossing(source=leg.media, destination=other.media, method=method,
                             initial=False)
            try:
                body = media.offer_in_request(body, request.headers.get("content-type"), offer)
            except MediaRefused as refusal:
                # RFC 3261 §14.2: the session goes on as it was.
                self.services.respond(transaction, make_response(
                    request, refusal.status or 488, refusal.reason))
                return
        relay = _Relay(self, leg, transaction, request, other, offer=offer)
        timer_headers = (other.timer.request_headers()
                         if other.timer is not None and method in ("INVITE", "UPDATE") else [])
        sent = other.dialog.new_request(
            method, via=self.services.via_for(other.peer),
            headers=[*timer_headers, *_body_headers(request)], body=body)
        if method == "INVITE" and body:
            other.sent_sdp(body)
        relay.sent = sent
        pending[id(relay)] = relay
        if self.services.send_request(sent, other.peer, relay) is None:
            self._relay_failed(relay, 503)

    def _relay_response(self, relay: _Relay, response: Response) -> None:
        status = response.status
        if status < 200:
            return
        self._forget_relay(relay)
        destination = relay.destination
        assert destination.dialog is not None and relay.sent is not None
        destination.dialog.receive_response(relay.sent, response)
        if relay.request.method == "INVITE" and 200 <= status < 300:
            if relay.request.body or not response.body:
                ack = destination.dialog.ack(relay.sent.cseq.number,
                                             via=self.services.via_for(destination.peer))
                self.services.send_ack(ack, destination.peer)
            elif relay.ack is not None:
                self._ack_late_answer(relay)  # the 2xx again: our ACK was lost
            else:
                # An offer in the 2xx: our ACK must carry the answer, which
                # comes in the source's ACK for the 2xx we relay (§13.2.1).
                self._late_answer = relay
        if status in (408, 481):
            self._relay_failed(relay, status)
            return
        headers = _body_headers(response)
        body = response.body
        media = self.media
        if status >= 300 and relay.offer is not None and media is not None:
            media.offer_rejected(relay.offer, status)
        if body and media is not None and status < 300 and relay.request.method in (
                "INVITE", "UPDATE"):
            body = self._relayed_answer(media, relay, response)
        source = relay.source.dialog
        if relay.request.method in ("INVITE", "UPDATE") and status < 300 and source is not None:
            # A 2xx to a target refresh carries our Contact (§12.1.1, RFC 3311 §5.2).
            headers.insert(0, ("Contact", source.local_contact))
            # It is a session refresh in both directions: both legs' clocks restart,
            # and the phone is told the timer still runs (RFC 4028 §9).
            for leg in (relay.source, destination):
                if leg.timer is not None:
                    leg.timer.refreshed()
            if relay.source.timer is not None:
                headers[1:1] = relay.source.timer.response_headers()
            if relay.request.method == "INVITE" and body:
                relay.source.sent_sdp(body)
        self.services.respond(relay.transaction, make_response(
            relay.request, status, response.reason, headers=headers, body=body))

    def _relayed_answer(self, media: CallMedia, relay: _Relay, response: Response) -> bytes:
        """The body of a 2xx to a relayed re-INVITE or UPDATE, through the media session.

        The answer to the request's offer; when the request had none (a
        re-INVITE without SDP, RFC 3261 §14.1), the 2xx carries an offer.
        """
        source, destination = relay.destination.media, relay.source.media
        assert source is not None and destination is not None
        crossing = Crossing(source=source, destination=destination,
                            method=relay.request.method, status=response.status, initial=False)
        content_type = response.headers.get("content-type")
        if relay.request.body:
            return media.answer(response.body, content_type, crossing)
        return media.offer(response.body, content_type, crossing)

    def _ack_late_answer(self, relay: _Relay) -> None:
        destination = relay.destination
        assert relay.ack is not None and relay.sent is not None
        if destination.dialog is None:
            return
        body, content_type = relay.ack
        self.services.send_ack(destination.dialog.ack(
            relay.sent.cseq.number, via=self.services.via_for(destination.peer), body=body,
            content_type=content_type), destination.peer)

    def _relay_failed(self, relay: _Relay, status: int) -> None:
        """§12.2.1.2: 408/481 or no answer to an in-dialog request ends the dialog."""
        self._forget_relay(relay)
        self.services.respond(relay.transaction, make_response(relay.request, status))
        if self.ended:
            return
        self._bye(relay.source)
        self._end(hangup_by="pbx", status=status,
                  reason=f"{relay.destination.side} leg failed")

    def _forget_relay(self, relay: _Relay) -> None:
        pending = self._pending_relays
        if pending is not None:
            pending.pop(id(relay), None)
            if not pending:
                self._pending_relays = None

    # ------------------------------------------------------------- ending

    def _other(self, leg: Leg) -> Leg | None:
        return self.connected if leg is self.a else self.a

    def _bye(self, leg: Leg) -> None:
        if leg.dialog is None or leg.dialog.state is DialogState.TERMINATED:
            return  # nothing to end: never set up, or the far end already ended it
        bye = leg.dialog.new_request("BYE", via=self.services.via_for(leg.peer))
        self.services.send_request(bye, leg.peer, _Bye())

    def _end(self, *, hangup_by: str, status: int | None = None,
             reason: str | None = None) -> None:
        if self.ended:
            return
        self.state = CallState.ENDED
        self._stop_dial_timer()
        self.a.set_up()  # no more 2xx retransmissions; the INVITE is let go
        record = self.record
        record.ended_at = self.services.now()
        record.hangup_by = hangup_by
        if record.answered_at is not None:
            record.status = record.status or 200
        record.status = status if status is not None and record.answered_at is None else (
            record.status or status)
        record.reason = reason
        if self.provisionals is not None:
            self.provisionals.stop()
        for leg in (self.a, *self.b_legs):
            if leg.timer is not None:
                leg.timer.stop()
            if leg.dialog is not None:
                self.services.forget_dialog(leg.dialog)
        self.services.call_ended(self)
        report, self._dial_done = self._dial_done, None
        if report is not None:
            report(DialOutcome(answered_by=None, status=487, reason="Call ended"))
        on_end, self._on_end = self._on_end, None
        for work in on_end or ():
            work()
        if self.media is not None:
            self.media.release()
        self._release()

    def _release(self) -> None:
        """Break every reference cycle through the ended call.

        The call and its legs point at each other (a leg owns the responses
        to its requests and hands them to its call); so do the call and its
        leg timers, reliable provisionals and relayed requests. Undone here,
        the ended call is freed by reference counting as soon as nothing
        else holds it: at once, or when the last transaction whose owner
        still needs it (a branch's INVITE that may yet be answered 2xx, a
        relayed request awaiting its answer) is over. Left alone, its
        memory would wait for the cyclic collector, which the service runs
        seldom (`pbx.service.YOUNG_GENERATION_THRESHOLD`).
        """
        a = self.a
        a.call = None
        for leg in (a, *self.b_legs):
            leg.timer = None
        self.b_legs = []
        self.connected = None
        self.provisionals = None
        self._pending_relays = None
        self._late_answer = None
        self._caller_timer = None
        self.media = None


def display_name(name: str | None) -> str | None:
    """`name` fit for a From display name and a CDR, or None when nothing is left.

    A quoted-string (RFC 3261 §25.1) takes any UTF-8 text, quotes and
    backslashes escaped (`quote_string`), but never a CR or LF, not even
    escaped; a name from the config or a phone has its line breaks and
    other control characters turned into spaces, so that it can neither
    break the header nor hide in it. Runs of blanks become one space.
    """
    if name is None:
        return None
    cleaned = " ".join("".join(" " if ord(char) < 32 or ord(char) == 127 else char
                               for char in name).split())
    return cleaned or None


def rank_final_status(status: int) -> tuple[int, int]:
    """Lower is better: §16.7 step 6 picks 6xx first, then the lowest class.

    Within 4xx the RFC prefers 401/407/415/420/484 (they can be fixed);
    then busy (486) over unavailable (480) over the rest (a timeout, 408):
    the caller hears the most telling reason. A 503 is converted to 500 by
    proxies, which a B2BUA does when it answers (see `B2buaCall.finish`). The only
    ranking there is: `pbx.testing` runs dialplans on this very call logic.
    """
    if 600 <= status < 700:
        return (0, status)
    preferred = {401: 0, 407: 0, 415: 1, 420: 1, 484: 1, 486: 2, 480: 3}
    return (status // 100, preferred.get(status, 5) * 1000 + status)


def _body_headers(message: Request | Response) -> list[tuple[str, str]]:
    if not message.body:
        return []
    return [(name, value) for name, value in message.headers
            if name.lower() in _BODY_HEADERS or name.lower() in ("c", "e")]
