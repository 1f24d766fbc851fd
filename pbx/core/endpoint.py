"""The SIP endpoint: the one object behind every listener [twisted.names].

Theory of operation
-------------------
Transports hand each message to `receive_data`. It is parsed; a message
that fails is answered statelessly with the status its `SipParseError`
carries, or dropped when no answer can be routed. A request gets RFC 3581
``received``/``rport`` on its top Via and goes into the `TransactionLayer`;
a response goes there too. Then the endpoint *pumps*: it drains the layer's
events (a new request is handled here: REGISTER to the registrar, OPTIONS
answered, everything else through the §8.2 checks), writes what the layer
wants sent through `Connections`, and re-arms its single timer to the
layer's next deadline [aioquic ``asyncio/protocol.py``].

Responses always go back to the address and connection the request came
from (symmetric response routing, RFC 3581 §4 and §18.2.2 for streams):
that is where a phone behind NAT can be reached.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbx.core.auth import PROXY_AUTH, Denied, SecurityEvent
from pbx.core.calls import CallManager
from pbx.core.events import BindingListener
from pbx.core.merged_requests import MergedRequests
from pbx.core.pending_bindings import CommitGate, PendingBindings
from pbx.core.pike import SourceLimiter
from pbx.core.plugin_dialogs import PluginDialogs
from pbx.core.plugin_requests import PluginRequests
from pbx.core.registrar import RegisterOutcome, Registrar
from pbx.core.request_log import RequestLog, credentials_algorithm
from pbx.core.uas import UasPolicy, check_request
from pbx.dialplan import RequestHandler
from pbx.sip.errors import SipParseError
from pbx.sip.events import (
    AckReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StrayResponseReceived,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorReported,
)
from pbx.sip.headers import Via
from pbx.sip.message import Request, Response, make_error_response, make_response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.transaction import (
    ClientTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    Transaction,
    TransactionLayer,
    TransactionState,
)

ENDPOINT_POLICY = UasPolicy(
    allowed_methods=("REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL", "UPDATE",
                     "INFO", "MESSAGE", "PRACK"),
    supported_extensions=("100rel", "timer"),
    accepted_types=("application/sdp",),
)
"""What the PBX takes. BYE, CANCEL, UPDATE, INFO and PRACK outside any dialog
or transaction get the 481 they deserve (§12.2.2), not a 405."""

NOT_STORED_RETRY_AFTER_S = 5
"""Retry-After of the 503 to a REGISTER whose change could not be written. The store
retries far more often (`pbx.store.RETRY_INTERVAL_S`), so a phone coming back after
this finds it working again unless the disk stays out for longer."""

_SECRET_HEADERS = ("authorization:", "proxy-authorization:")
_DIGEST_RESPONSE = re.compile(r'(?i)(\bresponse\s*=\s*)("[^"]*"?|[^,\s]*)')
"""The one secret-derived value of digest credentials: what a password guesser
would test offline. User name, realm, nonce, uri, algorithm, qop, nc and cnonce
are what an admin needs to see why a phone fails, and are sent in clear anyway."""


class Sender(Protocol):
    """How the endpoint sends bytes: `pbx.transport.connections.Connections` is one.

    A protocol rather than an import because the transports sit above the
    core (DESIGN.md): they call the endpoint, it never imports them.
    """

    udp_send: Callable[[bytes, str, int], None] | None
    """The UDP listener's send (data, host, port), or None: the endpoint calls it
    directly for UDP peers, the bulk of what a registrar sends."""

    def send(self, data: bytes, peer: Peer,
             on_failure: Callable[[], None] | None = None) -> bool: ...


_tag_random = random.Random(os.urandom(16))
_TAG_CHARS = 12
_TAGS_AT_ONCE = 512


class _TagPool:
    """Hex text for tags, made 512 tags at a time and handed out in slices."""

    def __init__(self) -> None:
        self.text = ""
        self.at = 0


_tags = _TagPool()


def new_tag() -> str:
    """A To/From tag: 48 random bits (RFC 3261 §19.3 asks for 32 or more).

    From a PRNG seeded once from the OS: tags need to be unique and hard to
    guess, not secret, and one ``os.urandom`` system call per tag showed up
    at 3% of a registration's cost. The random bytes come in blocks: a slice
    of ready hex text is cheaper than formatting a number for every tag.
    """
    pool = _tags
    at = pool.at
    if at >= len(pool.text):
        pool.text = _tag_random.randbytes(_TAGS_AT_ONCE * _TAG_CHARS // 2).hex()
        at = 0
    pool.at = at + _TAG_CHARS
    return pool.text[at : at + _TAG_CHARS]


class SipEndpoint:

    def __init__(
        self,
        *,
        clock: IReactorTime,
        connections: Sender,
        layer: TransactionLayer[Peer],
        registrar: Registrar,
        calls: CallManager | None = None,
        writer: PendingBindings | None,
        server_header: str,
        debug: bool = False,
        log_requests: bool = True,
        on_security_event: Callable[[SecurityEvent], None] | None = None,
        limiter: SourceLimiter | None = None,
    ) -> None:
        self.clock = clock
        self.limiter = limiter
        """Counts every message against its source before parsing (`pbx.core.pike`)."""
        if limiter is not None:
            limiter.on_block = self._flood_blocked
        self.connections = connections
        self.layer = layer
        self.registrar = registrar
        self.calls = calls
        if calls is not None:
            calls.pump = lambda: self._pump(self.clock.seconds())
        self.writer = writer
        self.commits: CommitGate | None = None
        """The store's group commit: a REGISTER's 200 that reports a change waits for it."""
        self._unstored: list[tuple[ServerTransaction[Peer], Request, Peer, Response]] = []
        """REGISTERs whose changes are recorded, answered once the commit has them."""
        self._pumping = False
        self.server_header = server_header
        self.debug = debug
        # Loggers are the instance's, with their namespaces spelt out: a Logger
        # as a class attribute is a descriptor that renames itself after the
        # class, which ran for Python classes (so whole messages were logged
        # under the class's name, not pbx.sip.wire) but not compiled ones.
        self.log = Logger(namespace="pbx.core.endpoint.SipEndpoint")
        self.wire = Logger(namespace="pbx.sip.wire")
        self.request_log = RequestLog(self.log, enabled=log_requests, debug=debug)
        """The line per answered request (`pbx.core.request_log`)."""
        self.on_security_event = on_security_event
        self.request_handlers: dict[str, RequestHandler] = {}
        self._policy_methods: tuple[str, ...] = ()
        self._policy = ENDPOINT_POLICY
        """Plugins' handlers for requests outside calls, by method (`PluginHost`)."""
        self._timer: IDelayedCall | None = None
        self._timer_at = 0.0  # when `_timer` is due
        self._later: set[IDelayedCall] = set()  # slowed-down answers, cancelled by stop()
        self.merged = MergedRequests()
        """Requests in progress and answered within Timer J, for §8.2.2.2's 482."""
        # --- pluginapi hooks (issue 21 item 3): the plugin services, set by the service.
        self.plugin_requests: PluginRequests | None = None
        """Answers requests plugins handle (`pbx.core.plugin_requests`)."""
        self.plugin_dialogs: PluginDialogs | None = None
        """Dialogs plugins own: in-dialog requests no call knows go there before a 481."""
        self.binding_listener: BindingListener | None = None
        """Hears each REGISTER's binding changes; None (free) until a plugin listens."""

    @property
    def policy(self) -> UasPolicy:
        """The methods the PBX takes: its own, and those plugins handle.

        Worked out again only when the plugins' methods change: every
        request is checked against it.
        """
        handlers = self.request_handlers
        if not handlers:
            return ENDPOINT_POLICY
        methods = tuple(handlers)
        if methods != self._policy_methods:
            extra = tuple(m for m in methods if m not in ENDPOINT_POLICY.allowed_methods)
            self._policy_methods = methods
            self._policy = replace(ENDPOINT_POLICY,
                                   allowed_methods=ENDPOINT_POLICY.allowed_methods + extra)
        return self._policy

    # ------------------------------------------------------------ MessageSink

    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        now = self.clock.seconds()
        limiter = self.limiter
        if limiter is not None and not limiter.allow(peer.host, now):
            return  # a flooding source: dropped unparsed, unanswered (reported once)
        if self.debug:
            self.wire.debug("Got from {peer}:\n{message}", peer=str(peer), message=_redacted(data))
        # A retransmission of a request still matched is answered unparsed: past
        # its capacity the PBX would otherwise spend its time parsing copies.
        # Only UDP retransmits (a WebSocket message is a datagram too, reliably).
        reliable = peer.is_reliable
        if not reliable and self.layer.absorb_datagram(data, now):
            self._pump(now)
            return
        try:
            message = parse_message(data, datagram=datagram)
            if isinstance(message, Request):
                _stamp_received(message, peer)
                self.layer.receive_request(message, peer, now, reliable=reliable,
                                           raw=None if reliable else data)
            else:
                self.layer.receive_response(message, peer, now)
        except SipParseError as error:
            self._answer_broken(error, data, peer)
            return
        self._pump(now)

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        self._answer_broken(error, data, peer)

    def connection_closed(self, peer: Peer) -> None:
        self.log.debug("Connection closed: {peer}", peer=str(peer))

    # ------------------------------------------------------------- handling

    def _answer_broken(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        answer = make_error_response(data, error, to_tag=new_tag())
        self.log.warn("Bad message from {peer}: {status} {reason}{dropped}", peer=str(peer),
                      status=error.status, reason=error.reason,
                      dropped="" if answer else " (dropped: no way to answer)")
        if answer is not None:
            self.connections.send(answer, peer)

    def _pump(self, now: float) -> None:
        if self._pumping:
            return  # work done while handling an event: the running pump drains it
        self._pumping = True
        try:
            self._drain(now)
        finally:
            self._pumping = False
        self._arm_timer()

    def _drain(self, now: float) -> None:
        layer = self.layer
        calls = self.calls
        while True:
            event = layer.next_event()
            if event is None:
                self._send_outgoing(now)
                if (event := layer.next_event()) is None:
                    return
            # An isinstance chain, not `match`: compiled, a class pattern is a
            # generic isinstance and a getattr by name per keyword, where these
            # are native type checks and field loads (every message passes here).
            if isinstance(event, RequestReceived):
                self._handle_request(event.transaction, event.request, event.source, now)
            elif isinstance(event, TransactionTerminated):
                transaction = event.transaction
                if isinstance(transaction, ServerTransaction):
                    self.merged.forget(
                        transaction, now,
                        answered_for_s=(self.layer.settings.timeout_s
                                        if transaction.state is TransactionState.COMPLETED
                                        else 0.0))
                # A call owns client transactions and INVITE server ones; the
                # other server transactions (every REGISTER's) are never its.
                if calls is not None and not isinstance(
                        transaction, ServerNonInviteTransaction):
                    calls.transaction_ended(transaction)
            elif isinstance(event, AckReceived):
                # An ACK for a 2xx goes to its call; any other needs no answer (§17.2.3).
                if calls is not None:
                    calls.ack(event.request)
            elif isinstance(event, ResponseReceived):
                if calls is not None:
                    calls.response(event.transaction, event.response)
            elif isinstance(event, TransactionTimedOut):
                if calls is not None and isinstance(event.transaction, ClientTransaction):
                    calls.failure(event.transaction, 408)
            elif isinstance(event, TransportErrorReported):
                if calls is not None and isinstance(event.transaction, ClientTransaction):
                    calls.failure(event.transaction, 503)
            elif isinstance(event, StrayResponseReceived):
                self.log.debug("Unsolicited {status} from {peer} dropped",
                               status=event.response.status, peer=str(event.source))
            elif isinstance(event, RequestRejected):
                self.log.warn("Rejected {method} from {peer}: {status} (table full)",
                              method=event.request.method, peer=str(event.source),
                              status=event.status)

    def _send_outgoing(self, now: float) -> None:
        layer = self.layer
        connections = self.connections
        for outgoing in layer.take_outgoing():
            if self.debug:
                self.wire.debug("Sent to {peer}:\n{message}", peer=str(outgoing.destination),
                                message=_redacted(outgoing.data))
            transaction = outgoing.transaction
            destination = outgoing.destination
            if destination.transport == "udp":
                # Straight to the UDP path (compiled), not through the
                # interpreted Connections.send: a registrar sends two
                # datagrams a registration, and that call cost ~2% of one.
                udp_send = connections.udp_send
                if udp_send is not None:
                    udp_send(outgoing.data, destination.host, destination.port)
                    continue
            # Only a connection being opened reports failure later: no closure for UDP.
            on_failure = None if transaction is None or destination.transport == "udp" else (
                lambda transaction=transaction: self._transport_failed(transaction))
            if not self.connections.send(outgoing.data, destination, on_failure) and (
                    transaction is not None):
                layer.receive_transport_error(transaction, now)

    def _transport_failed(self, transaction: Transaction[Peer]) -> None:
        """A connection opened to send `transaction`'s message could not be made."""
        now = self.clock.seconds()
        self.layer.receive_transport_error(transaction, now)
        self._pump(now)

    def _handle_request(
        self, transaction: ServerTransaction[Peer], request: Request, peer: Peer, now: float
    ) -> None:
        try:
            answer = self._answer(transaction, request, peer, now)
        except SipParseError as error:
            # A header the early checks did not need turned out malformed.
            answer = make_response(request, error.status, error.reason, to_tag=new_tag())
        if answer is None:
            return
        if isinstance(answer, Denied):
            # A challenge (or a blocked address's 403) to a call or a plugin's
            # request: as good when sent again, so answered without keeping
            # the transaction (RFC 3261 §8.2.7), as the registrar's 401s are.
            # Kept, an INVITE's 407 was re-sent 11 times over 32 s to a caller
            # that never ACKs: with a spoofed source, a reflection amplifier,
            # and ~6.5 KB held per INVITE. Retransmissions of the INVITE get
            # the same bytes from the layer's echo; the ACK to the 407 finds no
            # transaction and no dialog, and is dropped without an answer.
            self._respond(transaction, request, peer, answer.response, now,
                          stateless=answer.stateless and answer.delay_s <= 0)
            return
        self._respond(transaction, request, peer, answer, now)

    def _answer(
        self, transaction: ServerTransaction[Peer], request: Request, peer: Peer, now: float
    ) -> Response | Denied | None:
        """The response to a new request, or None when it will come later.

        A `Denied` is a refusal to authenticate (407, or 403 to a blocked
        address): `_handle_request` answers it statelessly when it says so.
        """
        # The PBX reads the bodies of what it answers itself and of new
        # INVITEs (their SDP offer); in-dialog requests are relayed as they
        # are, and plugins judge the bodies they are given.
        reads_body = request.to_addr.tag is None and request.method not in self.request_handlers
        early = check_request(request, self.policy, make_tag=new_tag, reads_body=reads_body)
        if early is not None:
            return early
        method = request.method
        calls = self.calls
        if method == "CANCEL":
            # §9.2: 200 when it matches an INVITE in progress, and that call ends it.
            invite = self.layer.find_server_invite_for_cancel(request)
            if invite is not None and calls is not None and calls.caller_cancel(invite):
                return make_response(request, 200, to_tag=None)
            return make_response(request, 481, to_tag=new_tag())
        if request.to_addr.tag is not None:
            if calls is not None and calls.in_dialog(transaction, request):
                return None  # the call answers
            dialogs = self.plugin_dialogs  # pluginapi: a plugin's dialog (a subscription)
            if dialogs is not None and dialogs.in_dialog(transaction, request, peer):
                return None  # its plugin answers
            # In a dialog the PBX does not know (§12.2.2).
            return make_response(request, 481, to_tag=None)
        if self.merged.is_merged(transaction, request, self.clock.seconds()):
            return make_response(request, 482, to_tag=new_tag())
        handler = self.request_handlers.get(method)
        if handler is not None and calls is not None:
            return self._to_plugin(handler, transaction, request, peer, now, calls)
        if method == "INVITE" and calls is not None:
            max_forwards = request.max_forwards
            if max_forwards is not None and max_forwards == 0:
                return make_response(request, 483, to_tag=new_tag())
            return calls.new_invite(transaction, request, peer, now)
        if method == "REGISTER":
            return self._register(transaction, request, peer, now)
        if method == "OPTIONS":
            return make_response(request, 200, to_tag=new_tag(), headers=[
                ("Allow", self.policy.allow_header),
                ("Accept", self.policy.accept_header),
                ("Supported", self.policy.supported_header),
                ("Server", self.server_header),
            ])
        return make_response(request, 481, to_tag=new_tag())

    def _register(
        self, transaction: ServerTransaction[Peer], request: Request, peer: Peer, now: float
    ) -> Response | None:
        outcome: RegisterOutcome = self.registrar.handle_register(request, peer, now)
        if outcome.changes is not None and self.writer is not None:
            self.writer.record_result(outcome.changes)
        listener = self.binding_listener  # pluginapi: registration events
        if listener is not None and outcome.changes is not None:
            listener.bindings_changed(outcome.changes, now)
        if outcome.security_event is not None:
            self._security(outcome.security_event)
        changes = outcome.changes
        if changes is not None and (changes.added or changes.removed):
            # A refresh (the bulk of all REGISTERs) is in the per-request event.
            self.log.info("Registered {user} from {peer} (authenticated with {algorithm}): "
                          "{added} added, {removed} removed",
                          user=outcome.authenticated_user, peer=str(peer),
                          algorithm=credentials_algorithm(request) or "MD5",
                          added=[b.contact for b in changes.added],
                          removed=[b.contact for b in changes.removed])
        if outcome.delay_s > 0:
            self._later.add(self.clock.callLater(outcome.delay_s, self._respond_later,
                                                 transaction, request, peer, outcome.response))
            return None
        if outcome.stateless:
            commits = self.commits
            if changes is not None and commits is not None:
                # Answered 200 means stored: the 200 waits for the group commit.
                held = self._unstored
                if not held:
                    commits.after_commit(self._answer_unstored)
                held.append((transaction, request, peer, outcome.response))
                return None
            self._respond(transaction, request, peer, outcome.response, now, stateless=True)
            return None
        return outcome.response

    def _answer_unstored(self, stored: bool) -> None:
        """Send the 200s that waited for the commit; a 503 each if it failed.

        The bindings in memory keep the change (see `pbx.store`): the 503
        tells the phone it is not registered as far as a restart is
        concerned, and it registers again after Retry-After.
        """
        held, self._unstored = self._unstored, []
        now = self.clock.seconds()
        for transaction, request, peer, response in held:
            if transaction.state is TransactionState.TERMINATED:
                continue
            if stored:
                self._respond(transaction, request, peer, response, now, stateless=True)
            else:
                self._respond(transaction, request, peer, make_response(
                    request, 503, "Registration not stored", to_tag=new_tag(),
                    headers=[("Retry-After", str(NOT_STORED_RETRY_AFTER_S))]), now)
        self._pump(now)

    def _to_plugin(self, handler: RequestHandler, transaction: ServerTransaction[Peer],
                   request: Request, peer: Peer, now: float, calls: CallManager
                   ) -> Response | Denied | None:
        """Authenticate like a call (407), then let the plugin decide the status."""
        sender = calls.auth.authenticate(request, peer, now, scheme=PROXY_AUTH,
                                         claimed_user=request.from_addr.sip_user)
        if isinstance(sender, Denied):
            if sender.security_event is not None:
                self._security(sender.security_event)
            return sender
        # pluginapi: the plugin's answer (status, headers, body, a dialog) comes later.
        plugin_requests = self.plugin_requests
        if plugin_requests is None:
            return make_response(request, 500, "Plugins not set up", to_tag=new_tag())
        plugin_requests.handle(handler, transaction, request, peer, sender)
        return None

    def respond_later(self, transaction: ServerTransaction[Peer], request: Request,
                      peer: Peer, response: Response) -> None:
        """pluginapi: `pbx.core.plugin_messages.Responder`, for plugins' answers."""
        self._respond_later(transaction, request, peer, response)

    def _respond_later(self, transaction: ServerTransaction[Peer], request: Request,
                       peer: Peer, response: Response) -> None:
        self._later = {call for call in self._later if call.active()}
        now = self.clock.seconds()
        if transaction.state.name == "TERMINATED":
            return
        self._respond(transaction, request, peer, response, now)
        self._pump(now)

    def _respond(self, transaction: ServerTransaction[Peer], request: Request, peer: Peer,
                 response: Response, now: float, *, stateless: bool = False) -> None:
        response.headers.add("Server", self.server_header)
        if stateless:
            self.layer.respond_statelessly(transaction, response, now)
        else:
            self.layer.respond(transaction, response, now)
        self.request_log.answered(request, peer, response, now)

    def _security(self, event: SecurityEvent) -> None:
        self.log.warn("Security: {kind} from {address} user={user} ({detail})",
                      kind=event.kind, address=event.address, user=event.user,
                      detail=event.detail)
        if self.on_security_event is not None:
            self.on_security_event(event)

    def _flood_blocked(self, address: str, messages: float, until: float) -> None:
        """The limiter blocked `address`: one security event per block, never per message."""
        assert self.limiter is not None  # only the limiter calls this
        limits = self.limiter.limits
        self._security(SecurityEvent(
            kind="flood", address=address, user="-",
            detail=f"{messages:.0f} messages within {limits.window_s:g} s (limit "
                   f"{limits.max_messages}); everything it sends is dropped for "
                   f"{until - self.clock.seconds():g} s"))

    def sweep(self, now: float) -> None:
        """Forget what has outlived its time (the service's housekeeping calls this).

        Without it the merged-request table would keep its last entries
        until new traffic made it sweep itself.
        """
        self.merged.sweep(now)
        self.layer.sweep(now)
        if self.limiter is not None:
            self.limiter.sweep(now)

    # ------------------------------------------------------------- timers

    def _arm_timer(self) -> None:
        """Keep the one reactor timer at or before the layer's next deadline.

        A timer that fires early is harmless (`_on_timer` re-arms it), while
        moving it costs a reactor call on every message: so it is moved only
        when the deadline comes sooner, which is rare, since most new
        deadlines (Timer J of a tombstone, say) lie behind the first.
        """
        deadline = self.layer.next_deadline()
        timer = self._timer
        # `_timer` is None exactly when no call is pending: `_on_timer` and
        # `stop` clear it, nothing else ends it. Its time is kept here too, so
        # that this check, made after every message, asks the reactor nothing.
        if deadline is None:
            if timer is not None:
                timer.cancel()
            self._timer = None
            return
        if timer is not None:
            if self._timer_at > deadline + 0.001:
                delay = max(0.0, deadline - self.clock.seconds())
                timer.reset(delay)
                self._timer_at = timer.getTime()
            return
        self._timer = timer = self.clock.callLater(
            max(0.0, deadline - self.clock.seconds()), self._on_timer)
        self._timer_at = timer.getTime()

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        self.layer.handle_timer(now)
        self._pump(now)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for call in self._later:
            if call.active():
                call.cancel()
        self._later.clear()


def _stamp_received(request: Request, peer: Peer) -> None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via.

    Every request pays for this, so the common case (one Via value on its
    line, ``rport`` asked for) edits the text in place and hands the header
    the typed Via it would otherwise parse again.
    """
    via = request.top_via
    params = via.params
    add_received = via.host != peer.host and via.host.strip("[]") != peer.host
    rport_at = -1
    for index, (name, value) in enumerate(params):
        if not value and (name == "rport" or name.lower() == "rport"):
            rport_at = index
            break
    if not add_received and rport_at < 0:
        return
    new_params = list(params)
    if add_received:
        new_params = [p for p in new_params if p[0].lower() != "received"]
        new_params.append(("received", peer.host))
        rport_at = next((i for i, (name, value) in enumerate(new_params)
                         if not value and name.lower() == "rport"), -1)
    if rport_at >= 0:
        new_params[rport_at] = (new_params[rport_at][0], str(peer.port))
    stamped = Via(transport=via.transport, host=via.host, port=via.port,
                  params=tuple(new_params), protocol=via.protocol)
    headers = request.headers
    line = headers.get("via") or ""
    if "," not in line:
        text = None
        if not add_received:
            if line.endswith(";rport"):  # where phones put it: no regex needed
                text = f"{line}={peer.port}"
            else:
                text = _BARE_RPORT.sub(f";rport={peer.port}", line, count=1)
                if text == line:
                    text = None
        headers.set_first_value("via", text if text is not None else str(stamped))
    else:
        _replace_top_via(request, str(stamped))
    headers._via = stamped


_BARE_RPORT = re.compile(r";[ \t]*rport(?=[ \t]*(?:;|$))", re.IGNORECASE)
"""A valueless rport parameter in a Via's text (RFC 3581 §3)."""


def _replace_top_via(request: Request, new_top: str) -> None:
    headers = request.headers
    first_line = headers.get("via") or ""
    if "," not in first_line:
        headers.set_first_value("via", new_top)
        return
    values = headers.values("via")  # several Vias on one line: split them out
    values[0] = new_top
    headers.set_all("via", values)


def _redacted(data: bytes) -> str:
    """A message for the debug log, with the digest ``response`` of its credentials
    replaced by <redacted> (`_DIGEST_RESPONSE` says why only that)."""
    text = data.decode(errors="replace")
    lines = []
    for line in text.split("\r\n"):
        if line.lower().startswith(_SECRET_HEADERS):
            line = _DIGEST_RESPONSE.sub(r"\1<redacted>", line)
        lines.append(line)
    return "\r\n".join(lines)

