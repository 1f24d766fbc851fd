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
        """Frames are autobahn's to assemble, within its size limits; never pending here."""
        return False

    def dataReceived(self, data: bytes) -> None:
        self.last_activity = self.factory.clock.seconds()
        self.factory.connections.touched(self)
        super().dataReceived(data)

    def onConnect(self, request: ConnectionRequest) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 "the 'sip' WebSocket subprotocol is required (RFC 7118)")
        return SUBPROTOCOL

    def onOpen(self) -> None:
        self._stop_handshake_timer()
        self.factory.connections.add(self)
        self._registered = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
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
                 **kwargs: Any) -> None:
        super().__init__(protocols=[SUBPROTOCOL], **kwargs)
        self.transport_name = transport_name
        self.sink = sink
        self.connections = connections
        self.clock = clock
        self.handshake_timeout_s = handshake_timeout_s
        # Browsers hold WebSocket connections open behind NAT with pings.
        # The opening handshake is timed by the protocol (0 turns autobahn's off).
        self.setProtocolOptions(autoPingInterval=30, autoPingTimeout=10,
                                maxMessagePayloadSize=65536, maxFramePayloadSize=65536,
                                openHandshakeTimeout=0)
