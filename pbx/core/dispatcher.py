"""The dispatcher: each event of the transaction layer to whoever handles it.

Theory of operation
-------------------
The endpoint (`pbx.core.endpoint`) drains the transaction layer and hands
every event here (`handle_event`). A new request passes the §8.2 checks
(`pbx.core.uas`) and then goes to one named handler per kind of request
[twisted.names ``DNSServerFactory``: ``messageReceived`` picks
``handleQuery``, ``handleNotify``, ... by opcode, ``handleOther`` for the
rest]:

=====================  =====================================================
``handle_cancel``      CANCEL: matched to its INVITE (§9.2)
``handle_in_dialog``   any request with a To tag: to its `DialogOwner`, else 481
``handle_new_invite``  INVITE outside a dialog: a new call
``handle_register``    REGISTER: the registrar, the 200 after the group commit
``handle_options``     OPTIONS: what the PBX takes (§11.2)
``handle_refer``       REFER outside a dialog: refused (403)
``handle_plugin``      a method a plugin took (MESSAGE, SUBSCRIBE, PUBLISH...)
``handle_other``       anything else outside a dialog: 481
=====================  =====================================================

Requests outside a dialog pick their handler by method in one dictionary
(`_handlers`), in which a plugin's method takes the place of the PBX's own.
Responses, time-outs and transport errors of requests the PBX sent go to
the `ResponseOwner` registered when they were sent (`pbx.core.owners`).

A handler answers at once (it returns the response) or later (it returns
None and answers through the layer itself). Answers made outside an
event (a plugin's, a group commit's, a slowed-down one) are queued in the
layer and the endpoint flushes them (`Timers.flush_soon`, or the flush
that runs after every timer): nothing here calls back up into the endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from twisted.logger import Logger

from pbx.core.auth import PROXY_AUTH, Denied, SecurityEvent
from pbx.core.calls import CallManager
from pbx.core.events import BindingListener
from pbx.core.merged_requests import MergedRequests
from pbx.core.owners import Owners, ResponseOwner
from pbx.core.pending_bindings import CommitGate, PendingBindings
from pbx.core.plugin_dialogs import PluginDialogs
from pbx.core.plugin_requests import PluginRequests
from pbx.core.registrar import RegisterOutcome, Registrar
from pbx.core.request_log import RequestLog, credentials_algorithm
from pbx.core.tags import new_tag
from pbx.core.timers import Timer, Timers
from pbx.core.uas import UasPolicy, check_request
from pbx.dialplan import RequestHandler
from pbx.sip.dialog import dialog_id_of_request
from pbx.sip.errors import SipParseError
from pbx.sip.events import (
    AckReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StrayResponseReceived,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorReported,
)
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.transaction import (
    ClientTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TableFullError,
    TransactionLayer,
    TransactionState,
)

ENDPOINT_POLICY = UasPolicy(
    allowed_methods=("REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL", "UPDATE",
                     "INFO", "MESSAGE", "PRACK", "REFER"),
    supported_extensions=("100rel", "timer"),
    accepted_types=("application/sdp",),
)
"""What the PBX takes. BYE, CANCEL, UPDATE, INFO and PRACK outside any dialog
or transaction get the 481 they deserve (§12.2.2), not a 405. REFER is
taken so that a call's REFER reaches the dialplan (`pbx.core.calls`)."""

NOT_STORED_RETRY_AFTER_S = 5
"""Retry-After of the 503 to a REGISTER whose change could not be written. The store
retries far more often (`pbx.store.RETRY_INTERVAL_S`), so a phone coming back after
this finds it working again unless the disk stays out for longer."""


Answer = Response | Denied | None
"""What a handler returns: the response now, a refusal to authenticate, or None
(it answers later, through the layer)."""

RequestRoute = Callable[[ServerTransaction[Peer], Request, Peer, float], Answer]


class Dispatcher:
    """Routes the transaction layer's events (see the module docstring)."""

    def __init__(
        self,
        *,
        layer: TransactionLayer[Peer],
        registrar: Registrar,
        calls: CallManager | None,
        owners: Owners,
        timers: Timers,
        server_header: str,
        log_requests: bool = True,
        debug: bool = False,
        on_security_event: Callable[[SecurityEvent], None] | None = None,
    ) -> None:
        self.layer = layer
        self.registrar = registrar
        self.calls = calls
        self.owners = owners
        """Who owns which dialog and which request's responses (`pbx.core.owners`)."""
        self.timers = timers
        self.server_header = server_header
        self.on_security_event = on_security_event
        self.writer: PendingBindings | None = None
        """Where the registrar's binding changes are recorded for the store."""
        self.commits: CommitGate | None = None
        """The store's group commit: a REGISTER's 200 that reports a change waits for it."""
        self._unstored: list[tuple[ServerTransaction[Peer], Request, Peer, Response]] = []
        """REGISTERs whose changes are recorded, answered once the commit has them."""
        self.log = Logger(namespace="pbx.core.dispatcher.Dispatcher")
        self.request_log = RequestLog(self.log, enabled=log_requests, debug=debug)
        """The line per answered request (`pbx.core.request_log`)."""
        # The plugin services (docs/plugins.md), set by the service.
        self.plugin_requests: PluginRequests | None = None
        """Answers requests plugins handle (`pbx.core.plugin_requests`)."""
        self.plugin_dialogs: PluginDialogs | None = None
        """Dialogs plugins own: in-dialog requests no call knows go there before a 481."""
        self.binding_listener: BindingListener | None = None
        """Hears each REGISTER's binding changes; None (free) until a plugin listens."""
        self.request_handlers: dict[str, RequestHandler] = {}
        """Plugins' handlers for requests outside calls, by method (`PluginHost`)."""
        self._plugin_methods: tuple[str, ...] = ()
        self._policy = ENDPOINT_POLICY
        self._own_handlers: dict[str, RequestRoute] = {
            "REGISTER": self.handle_register,
            "OPTIONS": self.handle_options,
            "REFER": self.handle_refer,
        }
        if calls is not None:
            self._own_handlers["INVITE"] = self.handle_new_invite
        self._handlers = self._own_handlers
        self._later: list[Timer] = []  # slowed-down answers, cancelled by stop()
        self.merged = MergedRequests()
        """Requests in progress and answered within Timer J, for §8.2.2.2's 482."""

    @property
    def policy(self) -> UasPolicy:
        """The methods the PBX takes: its own, and those plugins handle."""
        self._follow_plugins()
        return self._policy

    def _follow_plugins(self) -> None:
        """Rebuild the policy and the handler table when the plugins' methods changed.

        Plugins add their methods to `request_handlers` as they start, after
        the dispatcher is built; every request looks, so this is cheap when
        nothing changed (no plugin handles anything, most of all).
        """
        handlers = self.request_handlers
        if not handlers:
            if self._plugin_methods:
                self._plugin_methods = ()
                self._policy = ENDPOINT_POLICY
                self._handlers = self._own_handlers
            return
        methods = tuple(handlers)
        if methods == self._plugin_methods:
            return
        extra = tuple(m for m in methods if m not in ENDPOINT_POLICY.allowed_methods)
        self._plugin_methods = methods
        self._policy = replace(ENDPOINT_POLICY,
                               allowed_methods=ENDPOINT_POLICY.allowed_methods + extra)
        table = dict(self._own_handlers)
        if self.calls is not None:
            for method in methods:
                table[method] = self.handle_plugin
        self._handlers = table

    # ---------------------------------------------------------------- events

    def handle_event(self, event: TransactionEvent[Peer], now: float) -> None:
        """One event of the transaction layer."""
        # An isinstance chain, not `match`: compiled, a class pattern is a
        # generic isinstance and a getattr by name per keyword, where these
        # are native type checks and field loads (every message passes here).
        if isinstance(event, RequestReceived):
            self.handle_request(event.transaction, event.request, event.source, now)
        elif isinstance(event, TransactionTerminated):
            transaction = event.transaction
            if isinstance(transaction, ServerTransaction):
                self.merged.forget(
                    transaction, now,
                    answered_for_s=(self.layer.settings.timeout_s
                                    if transaction.state is TransactionState.COMPLETED
                                    else 0.0))
                # A call owns its INVITE server transaction; the other server
                # transactions (every REGISTER's) are never a call's.
                calls = self.calls
                if calls is not None and not isinstance(transaction, ServerNonInviteTransaction):
                    calls.invite_ended(transaction)
            elif isinstance(transaction, ClientTransaction):
                self.owners.transaction_ended(transaction)
        elif isinstance(event, AckReceived):
            # An ACK for a 2xx goes to its dialog; any other needs no answer (§17.2.3).
            request = event.request
            dialog_owner = self.owners.dialog_owner(dialog_id_of_request(request))
            if dialog_owner is not None:
                dialog_owner.in_dialog_ack(request)
        elif isinstance(event, ResponseReceived):
            owner = self.owners.response_owner(event.transaction)
            if owner is not None:
                owner.on_response(event.response)
        elif isinstance(event, TransactionTimedOut):
            self._failed(event.transaction, 408)
        elif isinstance(event, TransportErrorReported):
            self._failed(event.transaction, 503)
        elif isinstance(event, StrayResponseReceived):
            self.log.debug("Unsolicited {status} from {peer} dropped",
                           status=event.response.status, peer=str(event.source))
        elif isinstance(event, RequestRejected):
            self.log.warn("Rejected {method} from {peer}: {status} (table full)",
                          method=event.request.method, peer=str(event.source),
                          status=event.status)

    def _failed(self, transaction: object, status: int) -> None:
        if isinstance(transaction, ClientTransaction):
            owner = self.owners.response_owner(transaction)
            if owner is not None:
                owner.on_failure(status)

    # -------------------------------------------------------------- requests

    def handle_request(
        self, transaction: ServerTransaction[Peer], request: Request, peer: Peer, now: float
    ) -> None:
        """A new request: checked, routed to its handler, and answered."""
        try:
            answer = self._route(transaction, request, peer, now)
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
            self.respond(transaction, request, peer, answer.response, now,
                         stateless=answer.stateless and answer.delay_s <= 0)
            return
        self.respond(transaction, request, peer, answer, now)

    def _route(
        self, transaction: ServerTransaction[Peer], request: Request, peer: Peer, now: float
    ) -> Answer:
        self._follow_plugins()
        # The PBX reads the bodies of what it answers itself and of new
        # INVITEs (their SDP offer); in-dialog requests are relayed as they
        # are, and plugins judge the bodies they are given.
        in_dialog = request.to_addr.tag is not None
        method = request.method
        reads_body = not in_dialog and method not in self.request_handlers
        early = check_request(request, self._policy, make_tag=new_tag, reads_body=reads_body)
        if early is not None:
            return early
        if method == "CANCEL":
            return self.handle_cancel(transaction, request, peer, now)
        if in_dialog:
            return self.handle_in_dialog(transaction, request, peer, now)
        if self.merged.is_merged(transaction, request, now):
            return make_response(request, 482, to_tag=new_tag())
        handler = self._handlers.get(method)
        if handler is None:
            return self.handle_other(transaction, request, peer, now)
        return handler(transaction, request, peer, now)

    def handle_cancel(self, transaction: ServerTransaction[Peer], request: Request,
                      peer: Peer, now: float) -> Answer:
        """§9.2: 200 when it matches an INVITE in progress, and that call ends it."""
        invite = self.layer.find_server_invite_for_cancel(request)
        calls = self.calls
        if invite is not None and calls is not None and calls.caller_cancel(invite):
            return make_response(request, 200, to_tag=None)
        return make_response(request, 481, to_tag=new_tag())

    def handle_in_dialog(self, transaction: ServerTransaction[Peer], request: Request,
                         peer: Peer, now: float) -> Answer:
        """To the dialog's owner; a dialog nobody owns does not exist here (§12.2.2)."""
        owner = self.owners.dialog_owner(dialog_id_of_request(request))
        if owner is None:
            dialogs = self.plugin_dialogs  # a plugin's dialog (a subscription)
            if dialogs is not None and dialogs.in_dialog(transaction, request, peer):
                return None  # its plugin answers
            return make_response(request, 481, to_tag=None)
        owner.in_dialog_request(transaction, request)
        return None

    def handle_new_invite(self, transaction: ServerTransaction[Peer], request: Request,
                          peer: Peer, now: float) -> Answer:
        calls = self.calls
        assert calls is not None  # in the table only with calls
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards == 0:
            return make_response(request, 483, to_tag=new_tag())
        return calls.new_invite(transaction, request, peer, now)

    def handle_options(self, transaction: ServerTransaction[Peer], request: Request,
                       peer: Peer, now: float) -> Answer:
        policy = self._policy
        return make_response(request, 200, to_tag=new_tag(), headers=[
            ("Allow", policy.allow_header),
            ("Accept", policy.accept_header),
            ("Supported", policy.supported_header),
            ("Server", self.server_header),
        ])

    def handle_refer(self, transaction: ServerTransaction[Peer], request: Request,
                     peer: Peer, now: float) -> Answer:
        """A REFER outside any dialog: 403.

        RFC 3515 §2.4.2 lets a UA decline a REFER its policy does not
        approve. Outside a dialog a REFER asks the PBX itself to place a
        call for the sender (third-party call control), which nothing here
        does: refused, not 481 (that is for a dialog that does not exist,
        §12.2.2, and a REFER without a To tag names none). A REFER within a
        call goes to the call (`handle_in_dialog`), and from there to the
        dialplan; a plugin that takes REFER gets it here instead.
        """
        return make_response(request, 403, "REFER outside a dialog is not accepted",
                             to_tag=new_tag())

    def handle_other(self, transaction: ServerTransaction[Peer], request: Request,
                     peer: Peer, now: float) -> Answer:
        """A method the PBX allows only within a dialog (BYE, UPDATE, INFO...): 481."""
        return make_response(request, 481, to_tag=new_tag())

    # -------------------------------------------------------------- REGISTER

    def handle_register(self, transaction: ServerTransaction[Peer], request: Request,
                        peer: Peer, now: float) -> Answer:
        outcome: RegisterOutcome = self.registrar.handle_register(request, peer, now)
        if outcome.changes is not None and self.writer is not None:
            self.writer.record_result(outcome.changes)
        listener = self.binding_listener  # registration events, when a plugin listens
        if listener is not None and outcome.changes is not None:
            listener.bindings_changed(outcome.changes, now)
        if outcome.security_event is not None:
            self.report_security(outcome.security_event)
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
            response = outcome.response
            self._later.append(self.timers.call_later(
                outcome.delay_s,
                lambda: self._answer_later(transaction, request, peer, response)))
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
            self.respond(transaction, request, peer, outcome.response, now, stateless=True)
            return None
        return outcome.response

    def _answer_unstored(self, stored: bool) -> None:
        """Send the 200s that waited for the commit; a 503 each if it failed.

        The bindings in memory keep the change (see `pbx.store`): the 503
        tells the phone it is not registered as far as a restart is
        concerned, and it registers again after Retry-After.
        """
        held, self._unstored = self._unstored, []
        now = self.timers.clock.seconds()
        for transaction, request, peer, response in held:
            if transaction.state is TransactionState.TERMINATED:
                continue
            if stored:
                self.respond(transaction, request, peer, response, now, stateless=True)
            else:
                self.respond(transaction, request, peer, make_response(
                    request, 503, "Registration not stored", to_tag=new_tag(),
                    headers=[("Retry-After", str(NOT_STORED_RETRY_AFTER_S))]), now)
        self.timers.flush_soon()

    # --------------------------------------------------------------- plugins

    def handle_plugin(self, transaction: ServerTransaction[Peer], request: Request,
                      peer: Peer, now: float) -> Answer:
        """Authenticate like a call (407), then let the plugin decide the answer."""
        calls = self.calls
        handler = self.request_handlers.get(request.method)
        assert calls is not None and handler is not None  # in the table only then
        sender = calls.auth.authenticate(request, peer, now, scheme=PROXY_AUTH,
                                         claimed_user=request.from_addr.sip_user)
        if isinstance(sender, Denied):
            if sender.security_event is not None:
                self.report_security(sender.security_event)
            return sender
        # The plugin's answer (status, headers, body, a dialog) comes later.
        plugin_requests = self.plugin_requests
        if plugin_requests is None:
            return make_response(request, 500, "Plugins not set up", to_tag=new_tag())
        plugin_requests.handle(handler, transaction, request, peer, sender)
        return None

    # -------------------------------------------------------------- sending

    def send_request(self, request: Request, peer: Peer,
                     owner: ResponseOwner) -> ClientTransaction[Peer] | None:
        """Send a request the PBX makes outside a call (a plugin's NOTIFY or MESSAGE).

        Its responses, its time-out (408) or transport error (503), and the
        end of its transaction go to `owner`. Queued in the layer and flushed
        on the reactor's next turn, or by the flush under way. None when the
        transaction table is full: nothing was sent.
        """
        try:
            transaction = self.layer.send_request(request, peer, self.timers.clock.seconds(),
                                                  reliable=peer.is_reliable)
        except TableFullError:
            return None
        self.owners.own_responses(transaction, owner)
        self.timers.flush_soon()
        return transaction

    # -------------------------------------------------------------- answering

    def respond_later(self, transaction: ServerTransaction[Peer], request: Request,
                      peer: Peer, response: Response) -> None:
        """`pbx.core.plugin_messages.Responder`: a plugin's answer, decided after its event."""
        self._answer_later(transaction, request, peer, response)
        self.timers.flush_soon()

    def _answer_later(self, transaction: ServerTransaction[Peer], request: Request,
                      peer: Peer, response: Response) -> None:
        """An answer decided after its request's event (slowed down, or a plugin's)."""
        self._later = [timer for timer in self._later if timer.active()]
        if transaction.state is TransactionState.TERMINATED:
            return
        self.respond(transaction, request, peer, response, self.timers.clock.seconds())

    def respond(self, transaction: ServerTransaction[Peer], request: Request, peer: Peer,
                response: Response, now: float, *, stateless: bool = False) -> None:
        """Queue `response` in the layer (the endpoint sends it), and log it."""
        response.headers.add("Server", self.server_header)
        if stateless:
            self.layer.respond_statelessly(transaction, response, now)
        else:
            self.layer.respond(transaction, response, now)
        self.request_log.answered(request, peer, response, now)

    def report_security(self, event: SecurityEvent) -> None:
        self.log.warn("Security: {kind} from {address} user={user} ({detail})",
                      kind=event.kind, address=event.address, user=event.user,
                      detail=event.detail)
        if self.on_security_event is not None:
            self.on_security_event(event)

    def stop(self) -> None:
        """Cancel the slowed-down answers still waiting."""
        for timer in self._later:
            timer.cancel()
        self._later.clear()
