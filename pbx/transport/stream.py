"""SIP over TCP and TLS: one connection, messages framed by Content-Length.

Theory of operation
-------------------
Bytes go into a `StreamFramer` (pbx.sip.framing); each whole message goes
to the core, a CRLFCRLF ping is answered with CRLF (RFC 5626 §4.4.1), and a
stream that cannot be framed is reported and closed: after a bad
Content-Length nobody knows where the next message starts.

One timer per connection guards it: while a message is half received it is
the *stall* timeout (a peer that sends half a message and waits is either
broken or attacking, and holds a buffer), otherwise the *idle* timeout
(phones keep their connection alive with re-REGISTERs or pings).

TLS is this same protocol under Twisted's TLS wrapper; the transport name
("tcp" or "tls") comes from the factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.sip.framing import FramedMessage, FramingFailed, KeepAlivePing, StreamFramer
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamTimeouts:
    idle_s: float = 600.0
    """RFC 5626 keep-alives come every 2 minutes or so; ten minutes of silence is a dead peer."""
    stall_s: float = 30.0
    """How long half a message may sit in our buffer."""


def _host_port(address: IAddress) -> tuple[str, int]:
    host = getattr(address, "host", "0.0.0.0")
    port = getattr(address, "port", 0)
    return str(host), int(port)


class SipStreamProtocol(Protocol):
    log = Logger()

    def __init__(
        self,
        transport_name: str,
        sink: MessageSink,
        connections: Connections,
        clock: IReactorTime,
        timeouts: StreamTimeouts,
        first_message: bytes | None = None,
    ) -> None:
        self.transport_name = transport_name
        self.clock = clock
        self._timer: IDelayedCall | None = None
        self.sink = sink
        self.connections = connections
        self.timeouts = timeouts
        self.framer = StreamFramer()
        self.connection_id = connections.next_id()
        self.sip_peer = Peer(transport_name, "0.0.0.0", 0, self.connection_id)
        self._first_message = first_message
        self._registered = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.connections.is_full():
            self.log.warn("Refused {transport} connection: connection table full",
                          transport=self.transport_name)
            self.transport.loseConnection()
            return
        host, port = _host_port(self.transport.getPeer())
        self.sip_peer = Peer(self.transport_name, host, port, self.connection_id)
        self.connections.add(self)
        self._registered = True
        self.setTimeout(self.timeouts.idle_s)
        if self._first_message is not None:
            self.send_message(self._first_message)
            self._first_message = None

    def dataReceived(self, data: bytes) -> None:
        for event in self.framer.feed(data):
            if isinstance(event, FramedMessage):
                self.sink.receive_data(event.data, self.sip_peer, datagram=False)
            elif isinstance(event, KeepAlivePing):
                self.send_message(b"\r\n")
            elif isinstance(event, FramingFailed):
                self.sink.receive_broken_stream(event.error, event.data, self.sip_peer)
                self.close()
                return
        self.setTimeout(self.timeouts.stall_s if self.framer.buffered else self.timeouts.idle_s)

    def setTimeout(self, seconds: float | None) -> None:
        """(Re)arm the connection's one timer; None disarms it."""
        if self._timer is not None and self._timer.active():
            if seconds is not None:
                self._timer.reset(seconds)
                return
            self._timer.cancel()
        self._timer = None if seconds is None else self.clock.callLater(
            seconds, self.timeoutConnection)

    def timeoutConnection(self) -> None:
        self.log.info("Closing {peer}: {why}", peer=str(self.sip_peer),
                      why="stalled mid-message" if self.framer.buffered else "idle")
        self.close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        if self._registered:
            self.connections.remove(self)
            self._registered = False
            self.sink.connection_closed(self.sip_peer)

    def send_message(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class SipStreamFactory(Factory):
    """Accepts TCP (or, wrapped, TLS) connections from phones."""

    protocol = SipStreamProtocol
    noisy = False  # the service logs what it listens on

    def __init__(
        self,
        transport_name: str,
        sink: MessageSink,
        connections: Connections,
        clock: IReactorTime,
        timeouts: StreamTimeouts = StreamTimeouts(),
    ) -> None:
        self.transport_name = transport_name
        self.clock = clock
        self.sink = sink
        self.connections = connections
        self.timeouts = timeouts

    def buildProtocol(self, addr: IAddress | None) -> SipStreamProtocol:
        return SipStreamProtocol(self.transport_name, self.sink, self.connections, self.clock,
                                 self.timeouts)


class SipStreamClientFactory(ClientFactory):
    """One outbound connection, carrying the message that made us open it."""

    log = Logger()
    noisy = False

    def __init__(
        self,
        peer: Peer,
        first_message: bytes,
        sink: MessageSink,
        connections: Connections,
        clock: IReactorTime,
        timeouts: StreamTimeouts = StreamTimeouts(),
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.on_failure = on_failure
        self.peer = peer
        self.first_message = first_message
        self.sink = sink
        self.connections = connections
        self.timeouts = timeouts

    def buildProtocol(self, addr: IAddress | None) -> SipStreamProtocol:
        return SipStreamProtocol(self.peer.transport, self.sink, self.connections, self.clock,
                                 self.timeouts, first_message=self.first_message)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.log.info("Could not connect to {peer}: {reason}", peer=str(self.peer),
                      reason=reason.getErrorMessage())
        if self.on_failure is not None:
            self.on_failure()
