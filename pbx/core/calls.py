"""The calls in progress: their tables, and the services each `B2buaCall` uses.

Theory of operation
-------------------
`CallManager` sits between the endpoint and the `B2buaCall` controllers. The
endpoint hands it:

- a new INVITE (no To tag): authenticated with 407 (`pbx.core.auth`,
  proxy-style, RFC 3261 §22.3; the caller must be the From user), answered
  100 Trying at once, made into a `B2buaCall`, and given to the dialplan;
- CANCEL: matched to its INVITE by the transaction layer; 200 to the
  CANCEL here, the call does the rest.

Each leg's dialog is registered with the dispatcher's tables
(`pbx.core.owners`) as a `LegDialog`, which gives the leg's call the
requests and the ACKs within it (a REFER goes to the dialplan's
``on_refer`` hook, `refer`); each request a call sends is registered with
its `ResponseOwner`, which gets its responses, time-outs and transport
errors.

It also implements `CallServices`: sending through the transaction layer
(queued there, and flushed by the endpoint: `Timers.flush_soon`), timers
(`pbx.core.timers`, flushed after they run), our Via and Contact per
transport, tags and Call-IDs. Every table is bounded by the calls in progress, and `max_calls`
bounds those: past it, a new INVITE gets 503.

A call's record (CDR) is handed to ``record_cdr`` when it ends, and the
store writes it in its next group commit (`pbx.store.GroupCommit`). The 200
to the BYE that ended the call waits for that commit (`respond`): a BYE
answered 200 means the call is on record, even if the PBX is killed right
after. If the commit fails the 200 is sent all the same (the call is over
whatever the disk says) and the record stays queued for the retry.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.core.auth import PROXY_AUTH, Denied, RequestAuthenticator, SecurityEvent
from pbx.core.call import (
    B2buaCall,
    CallDetailRecord,
    CallState,
    Cancellable,
    Leg,
    Target,
    display_name,
)
from pbx.core.events import PluginEvents
from pbx.core.location import LocationService
from pbx.core.media import CallMedia, media_leg
from pbx.core.owners import Owners, ResponseOwner
from pbx.core.pending_bindings import CommitGate
from pbx.core.router import DialplanLoader, run_dialplan
from pbx.core.sender import Sender
from pbx.core.tags import new_tag
from pbx.core.timers import Timers
from pbx.dialplan import Call as DialplanCall
from pbx.dialplan import Party, ReferHandler, Referral, Reject, Users
from pbx.media.seam import MediaCall, MediaFactory, MediaRefused, Side
from pbx.sip.dialog import Dialog
from pbx.sip.errors import SipParseError
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.session_timer import IntervalTooSmall, Role, negotiate_uas
from pbx.sip.transaction import (
    ClientInviteTransaction,
    ClientTransaction,
    ServerTransaction,
    TableFullError,
    TransactionLayer,
    new_branch,
)
from pbx.sip.uri import SipUri, parse_uri, user_of

_random = random.Random(os.urandom(16))

SESSION_INTERVAL_S = 1800
"""RFC 4028's recommended session interval: a silently vanished phone's call
ends within about 20 minutes (the refresher's half interval plus margin)."""
MIN_SE_S = 90
_SHARED_CONTACTS = 4096


class LocalAddress(Protocol):
    """Our address as a given peer should see it, per transport."""

    def __call__(self, peer: Peer) -> tuple[str, int]: ...


class CallManager:
    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        layer: TransactionLayer[Peer],
        sender: Sender,
        auth: RequestAuthenticator,
        location: LocationService,
        users: Users,
        domain: str,
        local_address: LocalAddress,
        dialplan: DialplanLoader,
        record_cdr: Callable[[CallDetailRecord], None],
        on_security_event: Callable[[SecurityEvent], None],
        max_calls: int = 10_000,
        timers: Timers | None = None,
        owners: Owners | None = None,
    ) -> None:
        self.clock = clock
        self.layer = layer
        self.sender = sender
        self.auth = auth
        self.location = location
        self.users = users
        self.domain = domain
        self.local_address = local_address
        self.dialplan = dialplan
        self.record_cdr = record_cdr
        self.commits: CommitGate | None = None
        """The store's group commit, which the 200 to a call-ending BYE waits for."""
        self._unstored_byes: list[tuple[ServerTransaction[Peer], Response]] = []
        self.on_security_event = on_security_event
        self.max_calls = max_calls
        self.actions: dict[str, Callable[..., Any]] = {}
        self.media_factory: MediaFactory | None = None
        """Makes each new call's media session (`pbx.media.seam`): a relay plugin
        sets it. None: no session, and bodies cross the calls unchanged."""
        self.calls: set[B2buaCall] = set()
        self.owners = owners if owners is not None else Owners()
        """The dispatcher's tables: each leg's dialog, each request's responses."""
        self._invites: dict[ServerTransaction[Peer], B2buaCall] = {}
        self.timers = timers if timers is not None else Timers(clock)
        """The core's timers: what a call's timer queues is flushed after it runs."""
        self._handling: dict[B2buaCall, DialplanCall] = {}
        """The dialplan's view of each call whose handler is running: its hooks
        (``on_refer``) may be set or changed at any time until it returns."""
        self._refer_hooks: dict[B2buaCall, ReferHandler] = {}
        """The ``on_refer`` a handler left set when it returned: all that is kept of
        the dialplan's view of a call once its handler is done (memory per call)."""
        self._contacts: dict[tuple[str, str, int, str | None], str] = {}
        """Our Contact by transport, address and user: every dialog keeps one, the same text."""
        self.events: PluginEvents | None = None
        """pluginapi: hears each call's ringing, answer and end, for plugins."""

    def __len__(self) -> int:
        return len(self.calls)

    def use_media(self, factory: MediaFactory) -> None:
        """Every call from now on gets a media session from `factory` (a plugin's)."""
        self.media_factory = factory

    # ------------------------------------------------------------ entry points

    def new_invite(self, transaction: ServerTransaction[Peer], request: Request,
                   peer: Peer, now: float) -> Response | Denied | None:
        """An INVITE outside any dialog; the response now, or None (the call answers).

        A `Denied` (a challenge, or a refusal of a blocked address) goes back
        to the endpoint as it is: a plain challenge is answered statelessly
        there, so that an INVITE without credentials costs no transaction and
        no retransmissions of its 407 (see `pbx.core.endpoint`).
        """
        claimed = request.from_addr.sip_user
        user = self.auth.authenticate(request, peer, now, scheme=PROXY_AUTH,
                                      claimed_user=claimed)
        if isinstance(user, Denied):
            if user.security_event is not None:
                self.on_security_event(user.security_event)
            return user
        if claimed != user:
            # Caller ID is what the PBX vouches for: no calling as someone else.
            return make_response(request, 403, "From does not match the authenticated user",
                                 to_tag=self.new_tag())
        if not request.contacts or request.contacts[0].is_star:
            # §8.1.1.8: without a Contact the callee could never reach the caller.
            return make_response(request, 400, "Missing Contact", to_tag=self.new_tag())
        try:
            timer = negotiate_uas(request, min_se_s=MIN_SE_S, default_s=SESSION_INTERVAL_S,
                                  preferred_refresher=Role.UAC)
        except SipParseError as error:
            return make_response(request, 400, error.reason, to_tag=self.new_tag())
        if isinstance(timer, IntervalTooSmall):
            # RFC 4028 §6: too short an interval; the phone retries with ours.
            return make_response(request, 422, to_tag=self.new_tag(), headers=timer.headers())
        if len(self.calls) >= self.max_calls:
            return make_response(request, 503, "Too many calls", to_tag=self.new_tag(),
                                 headers=[("Retry-After", "5")])
        dialed = user_of(str(request.uri)) or str(request.uri)
        media: CallMedia | None = None
        if self.media_factory is not None:
            made = self._media_for(request, peer, user, dialed)
            if isinstance(made, Response):
                return made
            media = made
        self.layer.respond(transaction, make_response(request, 100), now)
        from_addr = request.from_addr
        # The name the office gave this user, else the one the phone shows:
        # what the callee's phone displays, the CDR keeps and the dialplan sees.
        caller_name = display_name(self.users.name(user)) or display_name(
            from_addr.display_name)
        call = B2buaCall(self, transaction=transaction, invite=request, peer=peer,
                    caller=user, caller_name=caller_name, dialed=dialed,
                    session_timer=timer, media=media)
        self.calls.add(call)
        self._invites[transaction] = call
        self.log.info("Call {call_id} from {caller} to {dialed}", call_id=request.call_id,
                      caller=user, dialed=dialed)
        handling = self._handling

        def keep_public(public: DialplanCall) -> None:
            handling[call] = public

        run_dialplan(
            self.dialplan.handler, call,
            caller=Party(user=user, display_name=caller_name, uri=from_addr.uri_text),
            dialed=dialed, users=self.users, resolve=self.resolve,
            actions=self.actions, log=self.log, on_public=keep_public,
        ).addBoth(self._handler_done, call)
        return None

    def _media_for(self, request: Request, peer: Peer, user: str,
                   dialed: str) -> CallMedia | Response:
        """The new call's media session, or the caller's answer when there can be none."""
        assert self.media_factory is not None
        caller = media_leg(Side.CALLER, None, user, peer, self.local_address)
        try:
            session = self.media_factory(MediaCall(call_id=request.call_id, caller=user,
                                                   dialed=dialed, caller_leg=caller))
        except MediaRefused as refusal:
            self.log.warn("Call {call_id} from {caller} refused: {reason}",
                          call_id=request.call_id, caller=user, reason=refusal.reason)
            return make_response(request, refusal.status or 503, refusal.reason,
                                 to_tag=self.new_tag())
        except Exception:
            self.log.failure("The media factory failed for call {call_id}",
                             call_id=request.call_id)
            return make_response(request, 500, "Media session failed", to_tag=self.new_tag())
        return CallMedia(session, call_id=request.call_id, caller=caller,
                         local_address=self.local_address)

    def caller_cancel(self, invite: ServerTransaction[Peer]) -> bool:
        call = self._invites.get(invite)
        if call is None:
            return False
        call.caller_cancelled()
        return True

    def _handler_done(self, result: object, call: B2buaCall) -> object:
        """The dialplan's handler returned: keep only the hook it left set, if any."""
        public = self._handling.pop(call, None)
        if public is not None and public.on_refer is not None and not call.ended:
            self._refer_hooks[call] = public.on_refer
        return result

    def invite_ended(self, transaction: ServerTransaction[Peer]) -> None:
        """A caller's INVITE transaction is over: a CANCEL can no longer match it."""
        self._invites.pop(transaction, None)

    # ------------------------------------------------------------ REFER

    def refer(self, leg: Leg, transaction: ServerTransaction[Peer], request: Request) -> None:
        """A REFER within a call: handed to the dialplan's ``on_refer`` hook.

        Transfer itself is not done by the core (a later issue): whoever set
        the hook decides the answer. With no hook the answer is 603 Decline,
        what Asterisk's chan_pjsip answers an endpoint whose transfers are
        turned off (``allow_transfer = no``): the REFER was understood and
        is refused by policy, where 501 would claim the PBX does not know
        REFER, which its Allow says it does, and 405 would contradict that
        Allow. RFC 3515 §2.4.2: 400 unless there is exactly one Refer-To.
        """
        call = leg.call
        dialog = leg.dialog
        if call is None or dialog is None:
            self.respond(transaction, make_response(request, 481))
            return
        refused = dialog.receive_request(request)
        if refused is not None:
            self.respond(transaction, make_response(request, refused))
            return
        refer_to = request.headers.values("refer-to")
        if len(refer_to) != 1:
            self.respond(transaction, make_response(
                request, 400, "A REFER needs exactly one Refer-To"))
            return
        public = self._handling.get(call)
        hook = public.on_refer if public is not None else self._refer_hooks.get(call)
        if hook is None:
            self.respond(transaction, make_response(request, 603, "Transfer not enabled"))
            return
        referral = Referral(
            refer_to=refer_to[0], referred_by=request.headers.get("referred-by"),
            by=leg.side,
            headers={name.lower(): value for name, value in reversed(list(request.headers))})

        async def decide() -> tuple[int, str | None]:
            try:
                return await hook(referral), None
            except Reject as refusal:
                return refusal.status, refusal.reason

        def answer(decided: tuple[int, str | None]) -> None:
            status, reason = decided
            if not 200 <= status < 700:
                self.log.warn("on_refer returned {status}, not a final status: 500 instead",
                              status=status)
                status, reason = 500, "Bad answer from on_refer"
            self.respond(transaction, make_response(request, status, reason))

        def failed(failure: Failure) -> None:
            self.log.failure("on_refer failed for call {call_id}", failure=failure,
                             call_id=call.record.call_id)
            self.respond(transaction, make_response(request, 500, "on_refer failed"))

        Deferred.fromCoroutine(decide()).addCallbacks(answer, failed)

    # ------------------------------------------------------------- targets

    def resolve(self, target: str) -> list[Target]:
        """An extension's registered phones, or a SIP URI with an IP address."""
        if self.users.exists(target):
            now = self.clock.seconds()
            return [
                Target(request_uri=binding.contact, peer=binding.target(),
                       label=target, to_uri=f"sip:{target}@{self.domain}")
                for binding in self.location.bindings(target, now)
            ]
        try:
            uri = parse_uri(target)
        except SipParseError:
            return []
        if not isinstance(uri, SipUri):
            return []
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
        port = uri.port or (5061 if transport == "tls" else 5060)
        return [Target(request_uri=target, peer=Peer(transport, uri.host.strip("[]"), port),
                       label=target)]

    # -------------------------------------------------------- CallServices

    @property
    def t1_s(self) -> float:
        return self.layer.settings.t1_s

    @property
    def t2_s(self) -> float:
        return self.layer.settings.t2_s

    def now(self) -> float:
        return self.clock.seconds()

    def respond(self, transaction: ServerTransaction[Peer], response: Response) -> None:
        commits = self.commits
        if (commits is not None and response.status == 200
                and transaction.request.method == "BYE"):
            # The call records its end right after answering; the 200 leaves
            # once the commit holding that record is done.
            held = self._unstored_byes
            if not held:
                commits.after_commit(self._answer_byes)
            held.append((transaction, response))
            return
        self._send_response(transaction, response)

    def _answer_byes(self, stored: bool) -> None:
        """The BYEs' 200s, now that their calls' records are committed (or could not be)."""
        held, self._unstored_byes = self._unstored_byes, []
        for transaction, response in held:
            self._send_response(transaction, response)

    def _send_response(self, transaction: ServerTransaction[Peer], response: Response) -> None:
        try:
            self.layer.respond(transaction, response, self.now())
        except Exception as error:
            self.log.debug("Not sent: {status} ({error})", status=response.status,
                           error=str(error))
        self.timers.flush_soon()

    def send_request(self, request: Request, peer: Peer,
                     owner: ResponseOwner) -> ClientTransaction[Peer] | None:
        try:
            transaction = self.layer.send_request(request, peer, self.now(),
                                                  reliable=peer.is_reliable)
        except TableFullError:
            return None
        self.owners.own_responses(transaction, owner)
        self.timers.flush_soon()
        return transaction

    def send_ack(self, request: Request, peer: Peer) -> None:
        self.sender.send(request.to_bytes(), peer)

    def cancel(self, transaction: ClientInviteTransaction[Peer]) -> None:
        self.layer.cancel(transaction, self.now())
        self.timers.flush_soon()

    def call_later(self, delay_s: float, work: Callable[[], None]) -> Cancellable:
        return self.timers.call_later(delay_s, work)

    def via_for(self, peer: Peer) -> str:
        host, port = self.local_address(peer)
        host = f"[{host}]" if ":" in host else host
        return f"SIP/2.0/{peer.via_transport} {host}:{port};branch={new_branch()};rport"

    def contact_for(self, peer: Peer, user: str | None) -> str:
        host, port = self.local_address(peer)
        key = (peer.transport, host, port, user)
        contact = self._contacts.get(key)
        if contact is None:
            bracketed = f"[{host}]" if ":" in host else host
            userinfo = f"{user}@" if user else ""
            scheme = "sips" if peer.transport in ("tls", "wss") else "sip"
            contact = f"<{scheme}:{userinfo}{bracketed}:{port};transport={peer.transport}>"
            if len(self._contacts) >= _SHARED_CONTACTS:
                self._contacts.clear()
            self._contacts[key] = contact
        return contact

    def new_tag(self) -> str:
        return new_tag()

    def new_call_id(self) -> str:
        return f"{_random.getrandbits(96):024x}@{self.domain}"

    def register_dialog(self, dialog: Dialog, leg: Leg) -> None:
        self.owners.own_dialog(dialog.id, LegDialog(self, leg))

    def forget_dialog(self, dialog: Dialog) -> None:
        self.owners.release_dialog(dialog.id)

    def callee_ringing(self, call: B2buaCall, callee: str) -> None:
        if self.events is not None:
            self.events.callee_ringing(call, callee)

    def callee_answered(self, call: B2buaCall, callee: str) -> None:
        if self.events is not None:
            self.events.callee_answered(call, callee)

    def call_ended(self, call: B2buaCall) -> None:
        self.calls.discard(call)
        if self.events is not None:
            self.events.call_ended(call)
        self._handling.pop(call, None)
        self._refer_hooks.pop(call, None)
        cdr = call.record.finished()
        self.record_cdr(cdr)
        self.log.info(
            "Call {call_id} from {caller} to {dialed} ended: {outcome}, hung up by "
            "{hangup_by}, {duration_s}s", call_id=cdr.call_id, caller=cdr.caller,
            dialed=cdr.dialed, outcome=f"answered by {cdr.answered_by}"
            if cdr.answered_by else f"{cdr.status} {cdr.reason or ''}".strip(),
            hangup_by=cdr.hangup_by, duration_s=cdr.duration_s)

    def hangup_all(self) -> None:
        """On stop: end every call cleanly (BYE or a final response)."""
        for call in list(self.calls):
            if call.state is not CallState.ENDED:
                call.hangup()



class LegDialog:
    """The `DialogOwner` of one leg's dialog: its requests go to the leg's call.

    A REFER goes to the dialplan instead (`CallManager.refer`); an ACK goes to
    the call: on the caller's leg it stops the 2xx retransmissions, and on
    either leg it may carry the answer to an offer the PBX relayed in a 2xx.
    """

    __slots__ = ("calls", "leg")

    def __init__(self, calls: CallManager, leg: Leg) -> None:
        self.calls = calls
        self.leg = leg

    def in_dialog_request(self, transaction: ServerTransaction[Peer], request: Request) -> None:
        leg = self.leg
        call = leg.call
        if call is None:
            self.calls.respond(transaction, make_response(request, 481))
            return
        if request.method == "REFER":
            self.calls.refer(leg, transaction, request)
            return
        call.in_dialog_request(leg, transaction, request)

    def in_dialog_ack(self, request: Request) -> None:
        leg = self.leg
        call = leg.call
        if call is not None:
            call.ack_received(leg, request)
