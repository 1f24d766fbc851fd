"""SIP over WebSocket (RFC 7118): one SIP message per WebSocket message.

The handshake must offer the ``sip`` subprotocol (RFC 7118 §4.1); anything
else is refused, so a stray HTTP client or another protocol's socket never
reaches the SIP core. Framing is the WebSocket's: a message without
Content-Length is the whole frame, as on a datagram. WSS is this factory
under Twisted's TLS wrapper; the transport name comes from the factory.
Browsers cannot be connected to, so a phone on WS is reachable only while
its connection is open (see `Connections`).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink

SUBPROTOCOL = "sip"


class SipWebSocketProtocol(WebSocketServerProtocol):
    log = Logger()
    factory: SipWebSocketFactory

    def connectionMade(self) -> None:
        # Counted from the accept, like a stream: a socket that never
        # upgrades holds a descriptor too. The opening handshake (TLS for
        # WSS, then the HTTP upgrade) must be over within handshake_timeout_s
        # (on our clock: autobahn's own timer is batched and fires early or late).
        factory = self.factory
        self.connection_id = factory.connections.next_id()
        assert self.transport is not None
        address = self.transport.getPeer()
        self.sip_peer = Peer(factory.transport_name, str(getattr(address, "host", "")),
                             int(getattr(address, "port", 0)), self.connection_id)
        self.last_activity = factory.clock.seconds()
        factory.connections.opened(self)
        self._counted = True
        self._handshake_timer: IDelayedCall | None = factory.clock.callLater(
            factory.handshake_timeout_s, self._handshake_too_slow)
        super().connectionMade()

    def _handshake_too_slow(self) -> None:
        self._handshake_timer = None
        self.log.info("Closing {peer}: WebSocket handshake not complete after {timeout_s:g} s",
                      peer=str(self.sip_peer), timeout_s=self.factory.handshake_timeout_s)
        self.abort()

    def _stop_handshake_timer(self) -> None:
        timer = getattr(self, "_handshake_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        self._handshake_timer = None

    @property
    def message_pending(self) -> bool:
        """Part of a WebSocket message is in and the rest is not (autobahn's own state).

        Bytes of a frame header not yet whole, a frame whose payload is still
        coming, or the first frames of a fragmented message.
        """
        if getattr(self, "state", None) != self.STATE_OPEN:
            return False
        return (bool(getattr(self, "data", b"")) or getattr(self, "current_frame", None)
                is not None or bool(getattr(self, "inside_message", False)))

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        self.last_activity = factory.clock.seconds()
        factory.connections.touched(self)
        self.plaintext_bytes += len(data)
        messages_before = self._messages_received
        super().dataReceived(data)
        # A message must be in whole within message_timeout_s of its first byte
        # however the bytes trickle (as on a stream, `pbx.transport.stream`).
        if not self.message_pending:
            self._stop_message_timer()
        elif self._message_timer is None or self._messages_received != messages_before:
            self._stop_message_timer()
            self._message_timer = factory.clock.callLater(
                factory.message_timeout_s, self._message_too_slow)

    def encrypted_bytes_only(self) -> None:
        """Part of a TLS record is in (WSS) and none of its text: a message has begun."""
        if getattr(self, "state", None) == self.STATE_OPEN and self._message_timer is None:
            self._message_timer = self.factory.clock.callLater(
                self.factory.message_timeout_s, self._message_too_slow)

    def _message_too_slow(self) -> None:
        self._message_timer = None
        self.log.info("Closing {peer}: WebSocket message not complete {timeout_s:g} s after "
                      "its first byte", peer=str(self.sip_peer),
                      timeout_s=self.factory.message_timeout_s)
        self.abort()

    def _stop_message_timer(self) -> None:
        timer = self._message_timer
        if timer is not None and timer.active():
            timer.cancel()
        self._message_timer = None

    def onConnect(self, request: ConnectionRequest) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 "the 'sip' WebSocket subprotocol is required (RFC 7118)")
        return SUBPROTOCOL

    def onOpen(self) -> None:
        self._stop_handshake_timer()
        self.factory.connections.add(self)
        self._registered = True

    _messages_received = 0
    plaintext_bytes = 0
    """Bytes received (after TLS, for WSS): `pbx.transport.tls.SipTlsProtocol` reads it."""
    _message_timer: IDelayedCall | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._messages_received += 1
        if payload.strip(b"\r\n") == b"":
            self.send_message(b"\r\n")  # CRLF keep-alive, as on a stream
            return
        self.factory.sink.receive_data(payload, self.sip_peer, datagram=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if getattr(self, "_registered", False):
            self._registered = False
            self.factory.connections.remove(self)
            self.factory.sink.connection_closed(self.sip_peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_handshake_timer()
        self._stop_message_timer()
        super().connectionLost(reason)
        if getattr(self, "_counted", False):
            self._counted = False
            self.factory.connections.closed(self)

    def send_message(self, data: bytes) -> None:
        # SIP is UTF-8 text; browsers' SIP stacks expect text frames.
        self.sendMessage(data, isBinary=False)

    def close(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose()
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class SipWebSocketFactory(WebSocketServerFactory):
    protocol = SipWebSocketProtocol  # type: ignore[assignment]
    noisy = False  # the service logs what it listens on

    def __init__(self, transport_name: str, sink: MessageSink, connections: Connections,
                 clock: IReactorTime, *, handshake_timeout_s: float = 10.0,
                 message_timeout_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(protocols=[SUBPROTOCOL], **kwargs)
        self.transport_name = transport_name
        self.sink = sink
        self.connections = connections
        self.clock = clock
        self.handshake_timeout_s = handshake_timeout_s
        self.message_timeout_s = message_timeout_s
        # Browsers hold WebSocket connections open behind NAT with pings.
        # The opening handshake is timed by the protocol (0 turns autobahn's off).
        self.setProtocolOptions(autoPingInterval=30, autoPingTimeout=10,
                                maxMessagePayloadSize=65536, maxFramePayloadSize=65536,
                                openHandshakeTimeout=0)
