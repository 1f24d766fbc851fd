"""A tiny SIP test client: a phone's side of the wire, for the service tests.

`connect` opens a `Link` over UDP, TCP, TLS, WS or WSS to a running PBX;
each link collects what the PBX sends in a `DeferredQueue` of frames (one
SIP message each, or `PONG` for a CRLF keep-alive answer). `Phone` builds
requests the way a phone would and answers digest challenges with the
client side of `pbx.sip.digest`.

Replies are read with a parser of our own (`Reply`), deliberately not the
PBX's, so a test sees the bytes as a phone would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, ssl
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from pbx.sip.digest import Challenge, authorization_for, select_challenge

PONG = b"\r\n"
"""The frame a stream link queues for a CRLF keep-alive answer (RFC 5626 §4.4.1)."""

DEFAULT_TIMEOUT_S = 3.0

_COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding",
}


# ---------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Reply:
    """A response as a phone reads it: status line, header lines, body."""

    raw: bytes
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def get_all(self, name: str) -> list[str]:
        """Values of every header line called `name` (compact forms included), in order."""
        key = name.lower()
        return [value for n, value in self.headers if _COMPACT.get(n.lower(), n.lower()) == key]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def __contains__(self, name: str) -> bool:
        return bool(self.get_all(name))

    @property
    def challenges(self) -> list[Challenge]:
        return [Challenge.parse(value) for value in self.get_all("www-authenticate")]

    @property
    def contacts(self) -> list[str]:
        """Contact values, one per binding (the PBX writes one header line each)."""
        return [value for line in self.get_all("contact") for value in _split_commas(line)]

    @property
    def to_tag(self) -> str | None:
        to = self.get("to") or ""
        for part in to.split(">")[-1].split(";"):
            name, _, value = part.strip().partition("=")
            if name.lower() == "tag":
                return value
        return None

    def __str__(self) -> str:
        return self.raw.decode(errors="replace")


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    version, status, reason = [*lines[0].split(" ", 2), ""][:3]
    if version != "SIP/2.0" or not status.isdigit():
        raise ValueError(f"not a SIP response: {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Reply(data, int(status), reason, tuple(headers), body)


def _split_commas(value: str) -> list[str]:
    parts, depth, quoted, current = [], 0, False, []
    for char in value:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def header_params(value: str) -> dict[str, str]:
    """``;name=value`` parameters after the last ``>`` (or the whole value), lowercased names."""
    tail = value.rsplit(">", 1)[-1] if ">" in value else value
    params = {}
    for part in tail.split(";")[1:]:
        name, _, param = part.strip().partition("=")
        params[name.lower()] = param
    return params


# ------------------------------------------------------------------ links


class Link:
    """One client-side connection (or UDP socket) to the PBX."""

    transport_name: str = ""
    reactor: Any

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.frames: DeferredQueue[bytes] = DeferredQueue()
        self.lost: Deferred[None] = Deferred()
        self.local_host = "127.0.0.1"
        self.local_port = 0

    @property
    def via_transport(self) -> str:
        return self.transport_name.upper()

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        raise NotImplementedError

    @property
    def is_closed(self) -> bool:
        return self.lost.called

    async def next_frame(self, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
        waiting = self.frames.get()
        waiting.addTimeout(timeout, self.reactor)
        return await waiting

    async def response(self, timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
        """The next final response (1xx are skipped)."""
        while True:
            frame = await self.next_frame(timeout)
            assert frame != PONG, "expected a SIP response, got a CRLF pong"
            reply = parse_reply(frame)
            if reply.status >= 200:
                return reply

    async def silence(self, seconds: float) -> None:
        """Wait `seconds` and check that nothing at all arrived meanwhile."""
        await deferLater(self.reactor, seconds, lambda: None)
        assert not self.frames.pending, f"unexpected: {self.frames.pending!r}"

    async def closed_within(self, timeout: float) -> None:
        """Wait for the PBX to close this connection (a TimeoutError if it does not)."""
        await _when(self.lost).addTimeout(timeout, self.reactor)


class _UdpProtocol(DatagramProtocol):
    def __init__(self, link: UdpLink) -> None:
        self.link = link

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.senders.append(addr)
        self.link.frames.put(data)


class UdpLink(Link):
    transport_name = "udp"

    def __init__(self, reactor: Any, server: tuple[str, int], local_host: str = "127.0.0.1"
                 ) -> None:
        super().__init__(reactor)
        self.server = server
        self.local_host = local_host
        self.senders: list[tuple[str, int]] = []
        self.protocol = _UdpProtocol(self)
        self.port = reactor.listenUDP(0, self.protocol, interface=local_host)
        self.local_port = self.port.getHost().port

    def send(self, data: bytes) -> None:
        self.protocol.transport.write(data, self.server)

    def close(self) -> Deferred[None]:
        if not self.lost.called:
            stopped = self.port.stopListening()
            self.lost.callback(None)
            if stopped is not None:
                return stopped
        return defer.succeed(None)


class _StreamProtocol(Protocol):
    def __init__(self, link: StreamLink) -> None:
        self.link = link
        self.buffer = bytearray()

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while buffer:
            if buffer.startswith(b"\r\n"):
                self.link.frames.put(PONG)
                del buffer[:2]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() in (b"content-length", b"l"):
                    length = int(value.strip())
            total = end + 4 + length
            if len(buffer) < total:
                return
            self.link.frames.put(bytes(buffer[:total]))
            del buffer[:total]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.link.lost.called:
            self.link.lost.callback(None)


class StreamLink(Link):
    """TCP, or TLS checking that the PBX's certificate names pbx.test."""

    def __init__(self, reactor: Any, transport_name: str) -> None:
        super().__init__(reactor)
        self.transport_name = transport_name
        self.protocol = _StreamProtocol(self)

    @classmethod
    async def open(cls, reactor: Any, transport_name: str, server: tuple[str, int],
                   trust: ssl.Certificate | None = None) -> StreamLink:
        link = cls(reactor, transport_name)
        host, port = server
        if transport_name == "tls":
            assert trust is not None
            options = ssl.optionsForClientTLS("pbx.test", trustRoot=trust)
            endpoint: Any = SSL4ClientEndpoint(reactor, host, port, options)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host, port)
        await connectProtocol(endpoint, link.protocol)
        link.local_port = link.protocol.transport.getHost().port
        return link

    def send(self, data: bytes) -> None:
        self.protocol.transport.write(data)

    def close(self) -> Deferred[None]:
        if not self.lost.called:
            self.protocol.transport.loseConnection()
        return _when(self.lost)


class WebSocketRefused(Exception):
    """The PBX closed the connection before the WebSocket opened."""


class _WsFactory(WebSocketClientFactory):
    def __init__(self, link: WsLink, url: str, subprotocols: Sequence[str]) -> None:
        super().__init__(url, protocols=list(subprotocols) or None)
        self.link = link


class _WsProtocol(WebSocketClientProtocol):
    factory: _WsFactory

    @property
    def link(self) -> WsLink:
        return self.factory.link

    def connectionMade(self) -> None:
        self.link.protocol = self
        super().connectionMade()

    def onOpen(self) -> None:
        self.link.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.link.frames.put(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.link.opened.called:
            self.link.opened.errback(WebSocketRefused(reason))
        if not self.link.lost.called:
            self.link.lost.callback(None)


class WsLink(Link):
    """SIP over WebSocket (RFC 7118): one message per text frame."""

    def __init__(self, reactor: Any, transport_name: str) -> None:
        super().__init__(reactor)
        self.transport_name = transport_name
        self.opened: Deferred[None] = Deferred()
        self.protocol: _WsProtocol | None = None

    @classmethod
    async def open(cls, reactor: Any, transport_name: str, server: tuple[str, int],
                   trust: ssl.Certificate | None = None,
                   subprotocols: Sequence[str] = ("sip",)) -> WsLink:
        link = cls(reactor, transport_name)
        host, port = server
        factory = _WsFactory(link, f"{transport_name}://{host}:{port}/", subprotocols)
        factory.protocol = _WsProtocol
        if transport_name == "wss":
            assert trust is not None
            options = ssl.optionsForClientTLS("pbx.test", trustRoot=trust)
            endpoint: Any = SSL4ClientEndpoint(reactor, host, port, options)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host, port)
        await endpoint.connect(factory)
        try:
            await link.opened
        except WebSocketRefused:
            await link.lost
            raise
        assert link.protocol is not None
        link.local_port = link.protocol.transport.getHost().port
        return link

    def send(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(data, isBinary=False)

    def close(self) -> Deferred[None]:
        if not self.lost.called and self.protocol is not None:
            self.protocol.sendClose()
        return _when(self.lost)


def _when(fired: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires when `fired` has (without taking its result)."""
    waiting: Deferred[None] = Deferred()
    fired.addBoth(lambda result: (waiting.callback(None), result)[1])
    return waiting


# ------------------------------------------------------------------ phones


def random_token() -> str:
    return os.urandom(6).hex()


def new_branch() -> str:
    return "z9hG4bK" + random_token()


@dataclass
class Phone:
    """A phone of user `user` behind one `Link`: builds requests, answers challenges."""

    link: Link
    user: str
    password: str | None = None
    domain: str = "pbx.test"
    call_id: str = field(default_factory=lambda: random_token() + "@test")
    from_tag: str = field(default_factory=random_token)
    cseq: int = 0
    ws_host: str = field(default_factory=lambda: f"{random_token()}.invalid")
    _challenge: Challenge | None = None
    _nc: int = 0

    @property
    def sent_by(self) -> str:
        if self.link.transport_name in ("ws", "wss"):
            return self.ws_host  # RFC 7118 §5.2: a browser cannot know its address
        return f"{self.link.local_host}:{self.link.local_port}"

    @property
    def contact_uri(self) -> str:
        transport = self.link.transport_name
        if transport in ("ws", "wss"):
            return f"sip:{self.user}@{self.ws_host};transport={transport}"
        return (f"sip:{self.user}@{self.link.local_host}:{self.link.local_port}"
                f";transport={transport}")

    def build(
        self,
        method: str,
        *,
        to_user: str | None = None,
        to_tag: str | None = None,
        cseq: int | None = None,
        branch: str | None = None,
        via: str | None = None,
        contacts: Iterable[str] = (),
        expires: int | None = None,
        authorization: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        cseq_method: str | None = None,
        request_uri: str | None = None,
    ) -> bytes:
        """A request; CSeq goes up by one unless given."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        to_user = to_user or self.user
        if via is None:
            via = f"SIP/2.0/{self.link.via_transport} {self.sent_by};rport"
            via += f";branch={branch or new_branch()}"
        to = f"<sip:{to_user}@{self.domain}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {request_uri or f'sip:{self.domain}'} SIP/2.0",
            f"Via: {via}",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
        ]
        lines += [f"Contact: {contact}" for contact in contacts]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        lines += [f"{name}: {value}" for name, value in headers]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append("User-Agent: service-test")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def request(self, method: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                      **kwargs: Any) -> Reply:
        self.link.send(self.build(method, **kwargs))
        return await self.link.response(timeout)

    def answer(
        self,
        challenge_reply: Reply,
        *,
        algorithm: str | None = None,
        username: str | None = None,
        password: str | None = None,
        uri: str | None = None,
    ) -> str:
        """An Authorization value for the challenge of `algorithm` (else the first usable)."""
        challenges = challenge_reply.challenges
        if algorithm is not None:
            challenges = [c for c in challenges if c.algorithm == algorithm]
        challenge = select_challenge(challenges)
        assert challenge is not None, f"no {algorithm or 'usable'} challenge in {challenges}"
        self._challenge, self._nc = challenge, 0
        return self.again(username=username, password=password, uri=uri)

    def again(self, *, username: str | None = None, password: str | None = None,
              uri: str | None = None) -> str:
        """An Authorization on the nonce last answered, with the next nonce count."""
        assert self._challenge is not None
        self._nc += 1
        password = password if password is not None else self.password
        assert password is not None
        credentials = authorization_for(
            self._challenge, username=username or self.user, password=password,
            method="REGISTER", uri=uri or f"sip:{self.domain}", cnonce=random_token(),
            nc=self._nc)
        return credentials.to_header_value()

    async def register(
        self,
        *,
        contacts: Sequence[str] | None = None,
        expires: int | None = 300,
        algorithm: str | None = "SHA-256",
        to_user: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        username: str | None = None,
        password: str | None = None,
    ) -> Reply:
        """REGISTER, answer the 401, return the final response to the second request."""
        if contacts is None:
            contacts = [self.contact_uri]
        contacts = [c if c == "*" or c.startswith("<") else f"<{c}>" for c in contacts]
        headers = list(headers)
        first = await self.request("REGISTER", to_user=to_user, contacts=contacts,
                                   expires=expires, headers=headers)
        if first.status != 401:
            return first
        authorization = self.answer(first, algorithm=algorithm, username=username,
                                    password=password)
        return await self.request("REGISTER", to_user=to_user, contacts=contacts,
                                  expires=expires, headers=headers,
                                  authorization=authorization)
