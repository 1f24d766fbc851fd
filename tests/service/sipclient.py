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
from collections.abc import Callable, Coroutine, Iterable, Sequence
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


class _HeaderLines:
    """Header access shared by what a phone reads: responses and requests."""

    __slots__ = ()
    headers: tuple[tuple[str, str], ...]

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
    def to_tag(self) -> str | None:
        return header_params(self.get("to") or "").get("tag")

    @property
    def from_tag(self) -> str | None:
        return header_params(self.get("from") or "").get("tag")

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.get("cseq") or "0 ?").partition(" ")
        return int(number), method.strip()

    @property
    def branch(self) -> str | None:
        return header_params(self.get("via") or "").get("branch")

    @property
    def contact_uri(self) -> str | None:
        """The URI of the first Contact, without its angle brackets."""
        value = self.get("contact")
        if value is None:
            return None
        if "<" in value:
            return value.split("<", 1)[1].split(">", 1)[0]
        return value.split(";", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class Reply(_HeaderLines):
    """A response as a phone reads it: status line, header lines, body."""

    raw: bytes
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def challenges(self) -> list[Challenge]:
        return [Challenge.parse(value) for value in self.get_all("www-authenticate")]

    @property
    def contacts(self) -> list[str]:
        """Contact values, one per binding (the PBX writes one header line each)."""
        return [value for line in self.get_all("contact") for value in _split_commas(line)]

    def __str__(self) -> str:
        return self.raw.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Received(_HeaderLines):
    """A request as a phone reads it (the PBX calling the phone, or in a call)."""

    raw: bytes
    method: str
    uri: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __str__(self) -> str:
        return self.raw.decode(errors="replace")


def parse_reply(data: bytes) -> Reply:
    message = parse_frame(data)
    if not isinstance(message, Reply):
        raise ValueError(f"not a SIP response: {message.method} {message.uri}")
    return message


def parse_frame(data: bytes) -> Reply | Received:
    """A response or a request, parsed the simple way a phone would."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    first = lines[0].split(" ", 2)
    if first[0] == "SIP/2.0":
        _, status, reason = [*first, ""][:3]
        if not status.isdigit():
            raise ValueError(f"not a SIP response: {lines[0]!r}")
        return Reply(data, int(status), reason, tuple(headers), body)
    if len(first) != 3 or first[2] != "SIP/2.0":
        raise ValueError(f"not a SIP message: {lines[0]!r}")
    return Received(data, first[0], first[1], tuple(headers), body)


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
        self.intercept: Callable[[bytes], bool] | None = None
        """Takes a frame before the queue does (a `Softphone` taking its calls' messages)."""

    def receive(self, frame: bytes) -> None:
        if frame == PONG or self.intercept is None or not self.intercept(frame):
            self.frames.put(frame)

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
        self.link.receive(data)


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
            self.link.receive(bytes(buffer[:total]))
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
        self.link.receive(payload)

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
        algorithm: str | None = None,
        to_user: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        username: str | None = None,
        password: str | None = None,
    ) -> Reply:
        """REGISTER, answer the 401, return the final response to the second request.

        Without `algorithm`, the first challenge offered, as a phone does:
        SHA-256 where the PBX offers it to this client (tests/service/conftest.py).
        """
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


# ------------------------------------------------------- phones that call

SDP = "application/sdp"
_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
            405: "Method Not Allowed", 481: "Call/Transaction Does Not Exist",
            486: "Busy Here", 487: "Request Terminated", 491: "Request Pending"}
_ANSWERING = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def sdp(port: int, direction: str = "sendrecv", version: int = 1) -> bytes:
    """One audio stream at 127.0.0.1:`port`, as a phone offers or answers it."""
    lines = ["v=0", f"o=- {port} {version} IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
             "t=0 0", f"m=audio {port} RTP/AVP 0", "a=rtpmap:0 PCMU/8000", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def direction_of(body: bytes) -> str:
    for line in body.decode().split("\r\n"):
        if line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive"):
            return line[2:]
    return "sendrecv"


def _without_tag(value: str) -> str:
    head, bracket, tail = value.rpartition(">")
    if not bracket:
        head, tail = "", value
    params = [p for p in tail.split(";") if not p.strip().lower().startswith("tag=")]
    return head + bracket + ";".join(params)


Behaviour = Callable[["PhoneCall"], Coroutine[Any, Any, None]]
"""What a phone does with an incoming call: ring, answer, refuse..."""


def ring_then_answer(delay_s: float = 0.05) -> Behaviour:
    async def behaviour(call: PhoneCall) -> None:
        call.ring()
        await call.pause(delay_s)
        call.answer()

    return behaviour


async def busy(call: PhoneCall) -> None:
    call.respond(call.invite, 486)


async def ring_forever(call: PhoneCall) -> None:
    call.ring()


async def early_media(call: PhoneCall) -> None:
    call.respond(call.invite, 183, body=call.sdp())


async def answer_even_if_cancelled(call: PhoneCall) -> None:
    """Rings; a CANCEL crosses the user picking up: 200 to the INVITE, then to the CANCEL."""
    call.answer_when_cancelled = True
    call.ring()


class Softphone:
    """A phone that makes and takes calls over one `Link`: a test double of a SIP UA.

    It registers through its `Phone`, takes every message of its calls off
    the link (REGISTER and the rest still go to ``link.frames``), answers
    retransmissions with its last response, and hands each incoming
    INVITE to `behaviour`. In a call it answers requests by
    `PhoneCall.answers`, ACKs final responses to its INVITEs, and queues
    everything for the test to look at.
    """

    def __init__(self, phone: Phone, *, media_port: int,
                 behaviour: Behaviour | None = None) -> None:
        self.phone = phone
        self.link = phone.link
        self.media_port = media_port
        self.behaviour = behaviour or ring_then_answer()
        self.calls: dict[str, PhoneCall] = {}
        self.incoming: DeferredQueue[PhoneCall] = DeferredQueue()
        self._last_response: dict[tuple[str, str | None, str], bytes | None] = {}
        self.link.intercept = self._receive

    @property
    def user(self) -> str:
        return self.phone.user

    async def register(self) -> None:
        reply = await self.phone.register(algorithm=None)
        assert reply.status == 200, str(reply)

    async def next_call(self, timeout: float = DEFAULT_TIMEOUT_S) -> PhoneCall:
        waiting = self.incoming.get()
        waiting.addTimeout(timeout, self.link.reactor)
        return await waiting

    async def call(self, to_user: str, *, body: bytes | None = None,
                   credentials: tuple[str, str] | None = None,
                   authenticate: bool = True,
                   invite_headers: Sequence[tuple[str, str]] = (),
                   display_name: str | None = None) -> PhoneCall:
        """INVITE `to_user`, answering the 407; the call, its INVITE sent with credentials.

        ``authenticate=False`` sends only the first INVITE (the 407 is the
        test's to read). ``credentials`` are (user, password), by default this
        phone's own. ``display_name`` is the name the phone puts in its From
        (written as given between quotes).
        """
        phone = self.phone
        shown = f'"{display_name}" ' if display_name is not None else ""
        call = PhoneCall(self, call_id=random_token() + "@test", local_tag=random_token(),
                         local_uri=f"{shown}<sip:{self.user}@{phone.domain}>",
                         remote_uri=f"<sip:{to_user}@{phone.domain}>",
                         remote_target=f"sip:{to_user}@{phone.domain}")
        self.calls[call.call_id] = call
        offer = body if body is not None else self.sdp()
        call.send_invite(offer, headers=list(invite_headers))
        if not authenticate:
            return call
        challenge = await call.final_response()
        assert challenge.status == 407, str(challenge)
        chosen = select_challenge(
            Challenge.parse(value) for value in challenge.get_all("proxy-authenticate"))
        assert chosen is not None
        username, password = credentials or (self.user, phone.password or "")
        authorization = authorization_for(
            chosen, username=username, password=password, method="INVITE",
            uri=call.request_uri, cnonce=random_token())
        call.send_invite(offer, headers=[*invite_headers, ("Proxy-Authorization",
                                                           authorization.to_header_value())])
        return call

    def sdp(self, direction: str = "sendrecv", version: int = 1) -> bytes:
        return sdp(self.media_port, direction, version)

    # ------------------------------------------------------------ the wire

    def send(self, data: bytes) -> None:
        self.link.send(data)

    def remember(self, request: Received, response: bytes) -> None:
        self._last_response[(request.call_id, request.branch, request.method)] = response

    def _receive(self, frame: bytes) -> bool:
        message = parse_frame(frame)
        call = self.calls.get(message.call_id)
        if isinstance(message, Reply):
            if call is None:
                return False  # not a call's: the REGISTER's, for the `Phone`
            call.response_received(message)
            return True
        key = (message.call_id, message.branch, message.method)
        if key in self._last_response:  # a retransmission
            last = self._last_response[key]
            if last is not None:
                self.send(last)
            return True
        self._last_response[key] = None
        if call is not None:
            call.request_received(message)
        elif message.method == "INVITE" and message.to_tag is None:
            call = PhoneCall.taking(self, message)
            self.calls[call.call_id] = call
            call.received.append(message)
            defer.ensureDeferred(self.behaviour(call))
            self.incoming.put(call)
        elif message.method != "ACK":
            _reply_to(self, message, 481, to_tag=random_token())
        return True


class PhoneCall:
    """One call as a phone keeps it: its dialog's identifiers, and what arrived in it.

    ``answers`` says how requests in the call are answered (a status, or
    None to leave them for the test to `respond` to, or never);
    ``received``/``requests`` and ``responses`` hold what came in.
    """

    def __init__(self, phone: Softphone, *, call_id: str, local_tag: str, local_uri: str,
                 remote_uri: str, remote_target: str, remote_tag: str | None = None) -> None:
        self.phone = phone
        self.call_id = call_id
        self.local_tag = local_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.remote_tag = remote_tag
        self.request_uri = remote_target
        self.cseq = 0
        self.answers: dict[str, int | None] = {
            "INVITE": 200, "UPDATE": 200, "BYE": 200, "INFO": 200, "MESSAGE": 200,
            "OPTIONS": 200}
        self.auto_ack = True
        self.answer_when_cancelled = False
        self.received: list[Received] = []
        self.requests: DeferredQueue[Received] = DeferredQueue()
        self.responses: DeferredQueue[Reply] = DeferredQueue()
        self.invite: Received | None = None
        """The INVITE this phone was called with (None for calls it made)."""
        self.invite_final: int | None = None
        self.ack_body = b""
        """What the ACK for a 2xx carries: the answer to an offer in that 2xx."""
        self._final_data: bytes | None = None
        self._invite_cseq = 0
        self._invite_branch = ""

    @classmethod
    def taking(cls, phone: Softphone, invite: Received) -> PhoneCall:
        call = cls(phone, call_id=invite.call_id, local_tag=random_token(),
                   local_uri=_without_tag(invite.get("to") or ""),
                   remote_uri=_without_tag(invite.get("from") or ""),
                   remote_target=invite.contact_uri or "", remote_tag=invite.from_tag)
        call.invite = invite
        return call

    def sdp(self, direction: str = "sendrecv", version: int = 1) -> bytes:
        return self.phone.sdp(direction, version)

    async def pause(self, seconds: float) -> None:
        await deferLater(self.phone.link.reactor, seconds, lambda: None)

    # ---------------------------------------------------------- as callee

    def ring(self) -> None:
        self.respond(self.invite, 180)

    def answer(self, body: bytes | None = None) -> None:
        """200 to the INVITE, unless it has had its final response already."""
        if self.invite_final is None:
            self.respond(self.invite, 200, body=self.sdp() if body is None else body)

    def respond(self, request: Received | None, status: int, *, body: bytes = b"",
                reason: str | None = None) -> None:
        assert request is not None
        contact = None
        if request.method in ("INVITE", "UPDATE") and 100 < status < 300:
            contact = self.phone.phone.contact_uri
        data = _reply_to(self.phone, request, status, to_tag=self.local_tag, contact=contact,
                         body=body, reason=reason)
        if request is self.invite and status >= 200:
            self.invite_final = status
            self._final_data = data

    def resend_answer(self) -> None:
        """The INVITE's 2xx again, as a phone does while it waits for the ACK (§13.3.1.4)."""
        assert self._final_data is not None
        self.phone.send(self._final_data)

    # ------------------------------------------------------------ as caller

    def send_invite(self, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.cseq += 1
        self._invite_cseq, self._invite_branch = self.cseq, new_branch()
        self._send("INVITE", self.request_uri, self.cseq, self._invite_branch, to_tag=None,
                   headers=headers, body=body)

    def cancel(self) -> None:
        self._send("CANCEL", self.request_uri, self._invite_cseq, self._invite_branch,
                   to_tag=None)

    def ack(self, reply: Reply) -> None:
        """The ACK for a 2xx (a transaction of its own) or for a failure (same branch)."""
        number, _ = reply.cseq
        if reply.status < 300:
            self.remote_tag = reply.to_tag
            self.remote_target = reply.contact_uri or self.remote_target
            self._send("ACK", self.remote_target, number, new_branch(), to_tag=self.remote_tag,
                       body=self.ack_body)
        else:
            uri = self.request_uri if number == self._invite_cseq else self.remote_target
            self._send("ACK", uri, number, reply.branch or "", to_tag=reply.to_tag)

    # ---------------------------------------------------------- in the call

    def request(self, method: str, *, body: bytes = b"", content_type: str = SDP,
                headers: Iterable[tuple[str, str]] = ()) -> int:
        """Send `method` in the call; its CSeq number (read the answer from `responses`)."""
        self.cseq += 1
        self._send(method, self.remote_target, self.cseq, new_branch(), to_tag=self.remote_tag,
                   headers=headers, body=body, content_type=content_type)
        return self.cseq

    async def bye(self) -> Reply:
        self.request("BYE")
        return await self.final_response()

    async def next_request(self, method: str | None = None,
                           timeout: float = DEFAULT_TIMEOUT_S) -> Received:
        """The next request received (of `method`, skipping others)."""
        while True:
            waiting = self.requests.get()
            waiting.addTimeout(timeout, self.phone.link.reactor)
            request = await waiting
            if method is None or request.method == method:
                return request

    async def next_response(self, timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
        waiting = self.responses.get()
        waiting.addTimeout(timeout, self.phone.link.reactor)
        return await waiting

    async def final_response(self, timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
        while (reply := await self.next_response(timeout)).status < 200:
            pass
        return reply

    # ------------------------------------------------------------ arriving

    def response_received(self, reply: Reply) -> None:
        if reply.cseq[1] == "INVITE" and reply.status >= 200 and (
                reply.status >= 300 or self.auto_ack):
            self.ack(reply)
        self.responses.put(reply)

    def request_received(self, request: Received) -> None:
        method = request.method
        if method == "CANCEL":
            if self.invite_final is None and self.answer_when_cancelled:
                self.answer()
            self.respond(request, 200)
            if self.invite_final is None:
                self.respond(self.invite, 487)
        elif method != "ACK":
            if method in ("INVITE", "UPDATE") and request.contact_uri:
                self.remote_target = request.contact_uri  # a target refresh
            status = self.answers.get(method, 405)
            if status is not None:
                offer = request.body if method == "INVITE" else b""
                answer = self.sdp(_ANSWERING.get(direction_of(offer), "sendrecv"), 2) \
                    if offer and status == 200 else b""
                self.respond(request, status, body=answer)
        self.received.append(request)
        self.requests.put(request)

    def _send(self, method: str, uri: str, cseq: int, branch: str, *, to_tag: str | None,
              headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
              content_type: str = SDP) -> None:
        link = self.phone.link
        phone = self.phone.phone
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{link.via_transport} {phone.sent_by};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: {self.local_uri};tag={self.local_tag}",
            f"To: {self.remote_uri}" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
        ]
        if method in ("INVITE", "UPDATE"):
            lines.append(f"Contact: <{phone.contact_uri}>")
        lines += [f"{name}: {value}" for name, value in headers]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        self.phone.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _reply_to(phone: Softphone, request: Received, status: int, *, to_tag: str,
              contact: str | None = None, body: bytes = b"", reason: str | None = None
              ) -> bytes:
    """A response the way §8.2.6.2 says: Via, From, Call-ID, CSeq copied; To tagged."""
    to = request.get("to") or ""
    if request.to_tag is None and status > 100:
        to += f";tag={to_tag}"
    lines = [f"SIP/2.0 {status} {reason or _REASONS.get(status, 'Whatever')}"]
    lines += [f"Via: {via}" for via in request.get_all("via")]
    lines += [f"From: {request.get('from')}", f"To: {to}", f"Call-ID: {request.call_id}",
              f"CSeq: {request.get('cseq')}"]
    if contact is not None:
        lines.append(f"Contact: <{contact}>")
    if body:
        lines.append(f"Content-Type: {SDP}")
    lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    phone.remember(request, data)
    phone.send(data)
    return data
