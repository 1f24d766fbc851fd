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
from twisted.logger import Logger

from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink

SUBPROTOCOL = "sip"


class SipWebSocketProtocol(WebSocketServerProtocol):
    log = Logger()
    factory: SipWebSocketFactory

    def onConnect(self, request: ConnectionRequest) -> str:
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST,
                                 "the 'sip' WebSocket subprotocol is required (RFC 7118)")
        if self.factory.connections.is_full():
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many connections")
        return SUBPROTOCOL

    def onOpen(self) -> None:
        factory = self.factory
        self.connection_id = factory.connections.next_id()
        assert self.transport is not None
        address = self.transport.getPeer()
        self.sip_peer = Peer(factory.transport_name, str(getattr(address, "host", "")),
                             int(getattr(address, "port", 0)), self.connection_id)
        factory.connections.add(self)
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

    def send_message(self, data: bytes) -> None:
        # SIP is UTF-8 text; browsers' SIP stacks expect text frames.
        self.sendMessage(data, isBinary=False)

    def close(self) -> None:
        self.sendClose()


class SipWebSocketFactory(WebSocketServerFactory):
    protocol = SipWebSocketProtocol  # type: ignore[assignment]
    noisy = False  # the service logs what it listens on

    def __init__(self, transport_name: str, sink: MessageSink, connections: Connections,
                 **kwargs: Any) -> None:
        super().__init__(protocols=[SUBPROTOCOL], **kwargs)
        self.transport_name = transport_name
        self.sink = sink
        self.connections = connections
        # Browsers hold WebSocket connections open behind NAT with pings.
        self.setProtocolOptions(autoPingInterval=30, autoPingTimeout=10,
                                maxMessagePayloadSize=65536, maxFramePayloadSize=65536)
