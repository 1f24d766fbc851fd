"""The SIP endpoint: the I/O shell behind every listener [twisted.names].

Theory of operation
-------------------
Transports hand each message to `receive_data`. It is parsed; a message
that fails is answered statelessly with the status its `SipParseError`
carries, or dropped when no answer can be routed. A request gets RFC 3581
``received``/``rport`` on its top Via (`pbx.sip.via`) and goes into the
`TransactionLayer`; a response goes there too. Then the endpoint
*flushes*: it drains the layer's events into the `Dispatcher` (which
decides who handles each, `pbx.core.dispatcher`), writes what the layer
wants sent through `Connections.send`, and keeps one timer at the layer's
next deadline [aioquic ``asyncio/protocol.py``].

That is all it does. Everything else that must go out (a call's timer, a
plugin's answer that arrives later, the answers a group commit releases)
is queued in the layer by whoever made it, and flushed here: after the
timers that did it (`pbx.core.timers.Timers` runs the flush after them),
or on the reactor's next turn (`Timers.flush_soon`). No flush runs inside
another, because nothing but the reactor starts one.

Responses always go back to the address and connection the request came
from (symmetric response routing, RFC 3581 §4 and §18.2.2 for streams):
that is where a phone behind NAT can be reached.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbx.core.auth import SecurityEvent
from pbx.core.calls import CallManager
from pbx.core.dispatcher import ENDPOINT_POLICY, Dispatcher
from pbx.core.owners import Owners
from pbx.core.pending_bindings import CommitGate, PendingBindings
from pbx.core.pike import SourceLimiter
from pbx.core.registrar import Registrar
from pbx.core.request_log import RequestLog
from pbx.core.sender import Sender
from pbx.core.tags import new_tag
from pbx.core.timers import Timer, Timers
from pbx.dialplan import RequestHandler
from pbx.sip.errors import SipParseError
from pbx.sip.message import Request, make_error_response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.transaction import Transaction, TransactionLayer
from pbx.sip.via import stamp_received

__all__ = ["ENDPOINT_POLICY", "Sender", "SipEndpoint", "new_tag"]

_SECRET_HEADERS = ("authorization:", "proxy-authorization:")
_DIGEST_RESPONSE = re.compile(r'(?i)(\bresponse\s*=\s*)("[^"]*"?|[^,\s]*)')
"""The one secret-derived value of digest credentials: what a password guesser
would test offline. User name, realm, nonce, uri, algorithm, qop, nc and cnonce
are what an admin needs to see why a phone fails, and are sent in clear anyway."""


class SipEndpoint:
    """Receive, drain the layer into the dispatcher, transmit, one timer (see above)."""

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
        timers: Timers | None = None,
        owners: Owners | None = None,
    ) -> None:
        self.clock = clock
        self.connections = connections
        self.layer = layer
        # One timer heap and one pair of ownership tables for the core: the
        # calls' when not given (they are made before the endpoint).
        if timers is None:
            timers = calls.timers if calls is not None else Timers(clock)
        if owners is None:
            owners = calls.owners if calls is not None else Owners()
        self.timers = timers
        timers.after = self._flush_now
        self.dispatcher = Dispatcher(
            layer=layer, registrar=registrar, calls=calls, owners=owners, timers=timers,
            server_header=server_header, log_requests=log_requests, debug=debug,
            on_security_event=on_security_event)
        self.dispatcher.writer = writer
        self.limiter = limiter
        """Counts every message against its source before parsing (`pbx.core.pike`)."""
        if limiter is not None:
            limiter.on_block = self._flood_blocked
        self.debug = debug
        # Loggers are the instance's, with their namespaces spelt out: a Logger
        # as a class attribute is a descriptor that renames itself after the
        # class, which ran for Python classes (so whole messages were logged
        # under the class's name, not pbx.sip.wire) but not compiled ones.
        self.log = Logger(namespace="pbx.core.endpoint.SipEndpoint")
        self.wire = Logger(namespace="pbx.sip.wire")
        self._deadline: Timer | None = None
        """The timer at (or before) the layer's next deadline; None when it has none."""
        self._deadline_at = 0.0  # when `_deadline` is due

    # What the service sets and reads, kept by the dispatcher.

    @property
    def request_handlers(self) -> dict[str, RequestHandler]:
        return self.dispatcher.request_handlers

    @request_handlers.setter
    def request_handlers(self, handlers: dict[str, RequestHandler]) -> None:
        self.dispatcher.request_handlers = handlers

    @property
    def writer(self) -> PendingBindings | None:
        return self.dispatcher.writer

    @writer.setter
    def writer(self, writer: PendingBindings | None) -> None:
        self.dispatcher.writer = writer

    @property
    def commits(self) -> CommitGate | None:
        return self.dispatcher.commits

    @commits.setter
    def commits(self, commits: CommitGate | None) -> None:
        self.dispatcher.commits = commits

    @property
    def server_header(self) -> str:
        return self.dispatcher.server_header

    @server_header.setter
    def server_header(self, value: str) -> None:
        self.dispatcher.server_header = value

    @property
    def request_log(self) -> RequestLog:
        """The line per answered request; the service sets ``enabled`` and ``debug``."""
        return self.dispatcher.request_log

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
            self._flush(now)
            return
        try:
            message = parse_message(data, datagram=datagram)
            if isinstance(message, Request):
                stamp_received(message, peer)
                self.layer.receive_request(message, peer, now, reliable=reliable,
                                           raw=None if reliable else data)
            else:
                self.layer.receive_response(message, peer, now)
        except SipParseError as error:
            self._answer_broken(error, data, peer)
            return
        self._flush(now)

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        self._answer_broken(error, data, peer)

    def connection_closed(self, peer: Peer) -> None:
        self.log.debug("Connection closed: {peer}", peer=str(peer))

    def _answer_broken(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        answer = make_error_response(data, error, to_tag=new_tag())
        self.log.warn("Bad message from {peer}: {status} {reason}{dropped}", peer=str(peer),
                      status=error.status, reason=error.reason,
                      dropped="" if answer else " (dropped: no way to answer)")
        if answer is not None:
            self.connections.send(answer, peer)

    # ---------------------------------------------------------------- flush

    def flush_soon(self) -> None:
        """Have what was queued outside any event sent on the reactor's next turn."""
        self.timers.flush_soon()

    def _flush_now(self) -> None:
        self._flush(self.clock.seconds())

    def _flush(self, now: float) -> None:
        """Drain the layer's events into the dispatcher and send what it queued.

        Runs only from the reactor: a message received, the timers, or a
        flush asked for (`flush_soon`); never from within a handler.
        """
        layer = self.layer
        dispatcher = self.dispatcher
        while True:
            event = layer.next_event()
            if event is None:
                self._send_outgoing(now)
                if (event := layer.next_event()) is None:
                    break
            dispatcher.handle_event(event, now)
        self.timers.flushed()
        self._arm_timer()

    def _send_outgoing(self, now: float) -> None:
        layer = self.layer
        connections = self.connections
        for outgoing in layer.take_outgoing():
            if self.debug:
                self.wire.debug("Sent to {peer}:\n{message}", peer=str(outgoing.destination),
                                message=_redacted(outgoing.data))
            transaction = outgoing.transaction
            destination = outgoing.destination
            # Only a connection being opened reports failure later: no closure for UDP.
            on_failure = None if transaction is None or destination.transport == "udp" else (
                lambda transaction=transaction: self._transport_failed(transaction))
            if not connections.send(outgoing.data, destination, on_failure) and (
                    transaction is not None):
                layer.receive_transport_error(transaction, now)

    def _transport_failed(self, transaction: Transaction[Peer]) -> None:
        """A connection opened to send `transaction`'s message could not be made."""
        self.layer.receive_transport_error(transaction, self.clock.seconds())
        self.timers.flush_soon()

    # ------------------------------------------------------------- security

    def _flood_blocked(self, address: str, messages: float, until: float) -> None:
        """The limiter blocked `address`: one security event per block, never per message."""
        assert self.limiter is not None  # only the limiter calls this
        limits = self.limiter.limits
        self.dispatcher.report_security(SecurityEvent(
            kind="flood", address=address, user="-",
            detail=f"{messages:.0f} messages within {limits.window_s:g} s (limit "
                   f"{limits.max_messages}); everything it sends is dropped for "
                   f"{until - self.clock.seconds():g} s"))

    def sweep(self, now: float) -> None:
        """Forget what has outlived its time (the service's housekeeping calls this).

        Without it the merged-request table would keep its last entries
        until new traffic made it sweep itself.
        """
        self.dispatcher.merged.sweep(now)
        self.layer.sweep(now)
        if self.limiter is not None:
            self.limiter.sweep(now)

    # ------------------------------------------------------------- timers

    def _arm_timer(self) -> None:
        """Keep the one timer at or before the layer's next deadline.

        A timer that fires early is harmless (`_on_deadline` re-arms it),
        while moving it costs a heap entry on every message: so it is moved
        only when the deadline comes sooner, which is rare, since most new
        deadlines (Timer J of a tombstone, say) lie behind the first.
        """
        deadline = self.layer.next_deadline()
        timer = self._deadline
        # `_deadline` is None exactly when no timer is pending: `_on_deadline`
        # and `stop` clear it, nothing else ends it. Its time is kept here too,
        # so that this check, made after every message, asks nothing of anyone.
        if deadline is None:
            if timer is not None:
                timer.cancel()
            self._deadline = None
            return
        if timer is not None:
            if self._deadline_at <= deadline + 0.001:
                return
            timer.cancel()
        self._deadline = self.timers.call_at(deadline, self._on_deadline)
        self._deadline_at = deadline

    def _on_deadline(self) -> None:
        """The layer's timers are due: they run, and the flush after timers sends."""
        self._deadline = None
        self.layer.handle_timer(self.clock.seconds())

    def stop(self) -> None:
        """Send what is queued (the answers a last commit released, BYEs), then
        cancel the endpoint's timers."""
        self._flush(self.clock.seconds())
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self.timers.flushed()
        self.dispatcher.stop()


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
