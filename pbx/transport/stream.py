"""SIP over TCP and TLS: one connection, messages framed by Content-Length.

Theory of operation
-------------------
Bytes go into a `StreamFramer` (pbx.sip.framing); each whole message goes
to the core, a CRLFCRLF ping is answered with CRLF (RFC 5626 §4.4.1), and a
stream that cannot be framed is reported and closed: after a bad
Content-Length nobody knows where the next message starts.

One timer per connection guards it, against the deadline that applies now:

- *handshake* (TLS only): the handshake must be over ``handshake_s`` after
  the connection was accepted, or it is closed; a client that connects and
  says nothing holds a descriptor and OpenSSL's state for nothing.
- *message*: from the moment the first byte of a message arrives, the whole
  message must be in within ``message_s``, however the bytes trickle: a
  deadline that each byte pushed back would let a sender at one byte a
  second hold the connection and its buffer for ever. A message completed
  in the same read as the start of the next one starts that one's deadline.
- *idle*: with nothing pending, a connection that receives nothing for
  ``idle_s`` is closed, unless a registration rides on it (a flow, RFC 5626):
  the phone is reachable only through it, so it stays while the binding
  does, keep-alives or not. Every read moves the idle deadline; rather
  than re-arming the timer for each one, the timer, when it fires, looks
  at the last activity and sleeps again for what is left.

TLS is this same protocol under Twisted's TLS wrapper; the transport name
("tcp" or "tls") comes from the factory. Whether the connection may stay at
all (per-source and total limits) is decided before this protocol is built
(`pbx.transport.connections.AdmittingFactory`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pbx.sip.framing import FramedMessage, FramingFailed, KeepAlivePing, StreamFramer
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamTimeouts:
    idle_s: float = 600.0
    """RFC 5626 keep-alives come every 2 minutes or so; ten minutes of silence is a dead peer."""
    message_s: float = 30.0
    """How long one message may take to arrive whole, from its first byte."""
    handshake_s: float = 10.0
    """How long a TLS handshake may take, from the connection being accepted."""


def _host_port(address: IAddress | None) -> tuple[str, int]:
    host = getattr(address, "host", "0.0.0.0")
    port = getattr(address, "port", 0)
    return str(host), int(port)


@implementer(IHandshakeListener)
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
        self._handshaking = transport_name == "tls"
        self._message_started_at: float | None = None
        self.last_activity = clock.seconds()
        self.plaintext_bytes = 0
        self._handshake_just_completed = False
        """Bytes received as SIP text (after TLS): `pbx.transport.tls.SipTlsProtocol` reads it."""

    @property
    def message_pending(self) -> bool:
        return self._message_started_at is not None

    def connectionMade(self) -> None:
        assert self.transport is not None
        host, port = _host_port(self.transport.getPeer())
        self.sip_peer = Peer(self.transport_name, host, port, self.connection_id)
        self.connections.opened(self)
        self.connections.add(self)
        self._registered = True
        self.last_activity = self.clock.seconds()
        self._arm(self.timeouts.handshake_s if self._handshaking else self.timeouts.idle_s)
        if self._first_message is not None:
            self.send_message(self._first_message)
            self._first_message = None

    def handshakeCompleted(self) -> None:
        """TLS is up (`IHandshakeListener`): from now on, the idle deadline."""
        self._handshaking = False
        self._handshake_just_completed = True
        self.last_activity = self.clock.seconds()
        self._arm(self.timeouts.idle_s)

    def encrypted_bytes_only(self) -> None:
        """Part of a TLS record is in and none of its text: a message has begun.

        Not when those bytes finished the handshake (the client's last
        handshake message carries no text either).
        """
        if self._handshake_just_completed:
            self._handshake_just_completed = False
            return
        if self._handshaking or self._message_started_at is not None:
            return
        self._message_started_at = self.clock.seconds()
        self._arm(self.timeouts.message_s)

    def dataReceived(self, data: bytes) -> None:
        now = self.clock.seconds()
        self.last_activity = now
        self.plaintext_bytes += len(data)
        self._handshake_just_completed = False
        self.connections.touched(self)
        completed = False
        for event in self.framer.feed(data):
            if isinstance(event, FramedMessage):
                completed = True
                self.sink.receive_data(event.data, self.sip_peer, datagram=False)
            elif isinstance(event, KeepAlivePing):
                completed = True
                self.send_message(b"\r\n")
            elif isinstance(event, FramingFailed):
                self.sink.receive_broken_stream(event.error, event.data, self.sip_peer)
                self.close()
                return
        if self.framer.message_pending:
            if self._message_started_at is None or completed:
                self._message_started_at = now
                self._arm(self.timeouts.message_s)
        else:
            # The timer stays at the finished message's deadline; firing with
            # nothing pending, it finds the idle deadline further on and sleeps.
            self._message_started_at = None

    def _arm(self, seconds: float) -> None:
        """Point the connection's one timer `seconds` from now."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            self._timer = self.clock.callLater(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _deadline_passed(self) -> None:
        timeouts = self.timeouts
        if self._handshaking:
            why = f"TLS handshake not complete after {timeouts.handshake_s:g} s"
        elif self._message_started_at is not None:
            why = f"message not complete {timeouts.message_s:g} s after its first byte"
        else:
            left_s = self.last_activity + timeouts.idle_s - self.clock.seconds()
            if left_s > 0:
                self._timer = self.clock.callLater(left_s, self._deadline_passed)
                return
            if self.connections.carries_flow(self.connection_id):
                # A registered phone is reachable only through its flow.
                self._timer = self.clock.callLater(timeouts.idle_s, self._deadline_passed)
                return
            why = f"idle for {timeouts.idle_s:g} s"
        self._timer = None
        self.log.info("Closing {peer}: {why}", peer=str(self.sip_peer), why=why)
        self.abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._registered:
            self._registered = False
            self.connections.remove(self)
            self.connections.closed(self)
            self.sink.connection_closed(self.sip_peer)

    def send_message(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


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
