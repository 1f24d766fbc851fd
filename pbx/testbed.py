"""The testbed of `pbx.testing`: a whole `PbxService` on a test clock, and phones that talk to it.

Not an API of its own: dialplan tests use `pbx.testing` (`FakeCall`, `run`).

Theory of operation
-------------------
`Office` builds the PBX from a config made for the test (the users, their
names and passwords), on a `twisted.internet.task.Clock`, without starting
it: no socket is bound and no file is opened. Its UDP listener (the
PBX's own, on a stand-in socket) is joined to a `Wire`, a first-in
first-out queue of datagrams between the PBX and `Station`s at addresses
of 127.0.0.1 (or at the address of a SIP URI). Each scripted extension's `ScriptedPhone`
registers over SIP (answering the 401); the `CallerPhone` sends the INVITE
(answering the 407), ACKs, and can CANCEL. A phone answers as it is
scripted the moment an INVITE reaches it; `Office.drive` delivers until
nothing is left to say, then moves the clock to the PBX's next timer (a
dial timeout, a retransmission), and so on until the test's condition
holds. All the decisions are the PBX's own: this module only plays the
phones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from pbx.dialplan import (
    Answered,
    Busy,
    Declined,
    DialResult,
    Failed,
    Handler,
    NoAnswer,
    Unavailable,
)
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.errors import SipParseError
from pbx.sip.headers import quote_string
from pbx.sip.message import Request, Response, make_response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.uri import SipUri, parse_uri, user_of

DOMAIN = "pbx.test"
PBX_ADDRESS = ("127.0.0.1", 5060)
"""Where the PBX listens, as its phones and its Via and Contact say (nothing is bound)."""
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
"""The session every phone offers and answers with (no media flows)."""
FIRST_PHONE_PORT = 5100


@dataclass(frozen=True, slots=True)
class Rings:
    """A phone that rings for `seconds` of the PBX's time, then does `then`.

    ``Rings(25, Answered("1002"))`` is picked up after 25 s: too late for a
    dial of 20 s, which the PBX cancels first.
    """

    seconds: float
    then: DialResult


PhoneScript: TypeAlias = DialResult | Rings
"""What a phone does when the PBX rings it (see `pbx.testing`)."""


class Station(Protocol):
    """Something at an address the PBX sends to: a phone, the caller."""

    def receive(self, message: Request | Response) -> None: ...


class Wire:
    """Every datagram between the PBX and the phones, delivered one at a time, in order.

    The PBX's side is its own UDP listener, `SipDatagramProtocol`, built as
    `PbxService` builds it and connected to `_Socket` instead of a bound
    port: datagrams go in through ``datagramReceived`` and come out through
    the transport's ``write``, Twisted's interface for a UDP protocol. A
    phone's side is `Station.receive`. First in, first out: a phone's answer
    is delivered after whatever the PBX sent before it, as on a network.
    """

    def __init__(self, service: Any) -> None:
        from pbx.transport.udp import SipDatagramProtocol

        self.phones: dict[tuple[str, int], Station] = {}
        self._queue: deque[tuple[bytes, tuple[str, int], bool]] = deque()
        self._listener = SipDatagramProtocol(service.endpoint, service.connections)
        self._listener.makeConnection(_Socket(self._queue))  # type: ignore[arg-type]

    def to_pbx(self, message: Request | Response, source: Peer) -> None:
        self._queue.append((message.to_bytes(), (source.host, source.port), True))

    def settle(self) -> None:
        """Deliver until nobody has anything more to say."""
        queue = self._queue
        while queue:
            data, address, to_pbx = queue.popleft()
            if to_pbx:
                self._listener.datagramReceived(data, address)
                continue
            phone = self.phones.get(address)
            if phone is not None:  # else an address nobody answers at
                phone.receive(parse_message(data))


class _Socket:
    """The PBX's UDP socket, as far as its listener uses one: what it writes is queued."""

    def __init__(self, queue: deque[tuple[bytes, tuple[str, int], bool]]) -> None:
        self._queue = queue

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self._queue.append((data, address, False))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *PBX_ADDRESS)


class ScriptedPhone:
    """A SIP phone at `peer`: registers its extension, answers INVITEs as scripted."""

    def __init__(self, wire: Wire, peer: Peer, user: str, script: PhoneScript,
                 clock: IReactorTime) -> None:
        self.wire = wire
        self.clock = clock
        self.peer = peer
        self.user = user
        self.script = script
        self.password = _password(user)
        contact_user = user_of(user) if _is_uri(user) else user
        at = f"{contact_user}@" if contact_user else ""
        self.contact = f"<sip:{at}{peer.host}:{peer.port};transport=udp>"
        self.registered = False
        self.rang: list[Request] = []
        self.requests: list[Request] = []
        """Every request the PBX sent this phone, retransmissions left out."""
        self._seen: set[tuple[str, str]] = set()
        self.on_ringing: Callable[[], None] | None = None
        self._answers: dict[str, list[Response]] = {}
        """What was sent for each INVITE, by branch: again for a retransmission."""
        self._finished: set[str] = set()
        wire.phones[(peer.host, peer.port)] = self

    # ------------------------------------------------------- registering

    def register(self, authorization: str | None = None) -> None:
        cseq = 2 if authorization else 1
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.peer.host}:{self.peer.port};branch=z9hG4bKreg{cseq};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{DOMAIN}>;tag=reg-{self.user}",
            f"To: <sip:{self.user}@{DOMAIN}>",
            f"Call-ID: reg-{self.user}@pbx.testing",
            f"CSeq: {cseq} REGISTER",
            f"Contact: {self.contact}",
            "Expires: 3600",
            *([f"Authorization: {authorization}"] if authorization else []),
        ]
        self.wire.to_pbx(_request(lines), self.peer)

    def _registration_answered(self, response: Response) -> None:
        if response.status == 401 and not self.registered:
            self.register(_credentials(response, "www-authenticate", self.user, self.password,
                                       "REGISTER", f"sip:{DOMAIN}"))
        elif response.status == 200:
            self.registered = True

    # ------------------------------------------------------- being called

    def receive(self, message: Request | Response) -> None:
        if isinstance(message, Response):
            if message.cseq.method == "REGISTER":
                self._registration_answered(message)
            return
        branch = message.top_via.branch or ""
        if (branch, message.method) not in self._seen:
            self._seen.add((branch, message.method))
            self.requests.append(message)
        if message.method == "INVITE" and message.to_addr.tag is None:
            if branch in self._answers:  # a retransmission
                for response in self._answers[branch]:
                    self.wire.to_pbx(response, self.peer)
                return
            self._answers[branch] = []
            self.rang.append(message)
            self._ring(message, branch)
        elif message.method == "CANCEL":
            self._send(make_response(message, 200), branch=None)
            invite = next((r for r in self.rang if r.top_via.branch == branch), None)
            if invite is not None and branch not in self._finished:
                self._send(make_response(invite, 487, to_tag=self._tag(invite)), branch)
        elif message.method != "ACK":
            self._send(make_response(message, 200), branch=None)  # BYE and the rest

    def _ring(self, invite: Request, branch: str) -> None:
        script = self.script
        if isinstance(script, Rings):
            self._ringing(invite, branch)
            self.clock.callLater(script.seconds, self._then, invite, branch, script.then)
            return
        if isinstance(script, (Answered, NoAnswer)):
            self._ringing(invite, branch)
        self._then(invite, branch, script)

    def _ringing(self, invite: Request, branch: str) -> None:
        self._send(self._reply(invite, 180), branch)
        if self.on_ringing is not None:
            self.on_ringing()

    def _then(self, invite: Request, branch: str, script: DialResult) -> None:
        """The phone's final answer, unless the INVITE has had one (a CANCEL's 487)."""
        if branch in self._finished or isinstance(script, NoAnswer):
            return
        if isinstance(script, Answered):
            self._send(self._reply(invite, 200, body=SDP), branch)
        else:
            status, reason = _status_of(script)
            self._send(self._reply(invite, status, reason), branch)

    def _reply(self, invite: Request, status: int, reason: str | None = None,
               body: bytes = b"") -> Response:
        headers = [("Contact", self.contact)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return make_response(invite, status, reason, to_tag=self._tag(invite),
                             headers=headers, body=body)

    def _tag(self, invite: Request) -> str:
        return f"phone-{invite.call_id[:8]}"

    def _send(self, response: Response, branch: str | None) -> None:
        if branch is not None:
            self._answers[branch].append(response)
            if response.status >= 200:
                self._finished.add(branch)
        self.wire.to_pbx(response, self.peer)


class CallerPhone:
    """The caller's phone: INVITEs `dialed`, answers the 407, ACKs, can hang up."""

    def __init__(self, wire: Wire, peer: Peer, user: str, password: str, dialed: str,
                 shown_name: str | None, headers: Mapping[str, str]) -> None:
        self.wire = wire
        self.peer = peer
        self.user = user
        self.password = password
        self.request_uri = f"sip:{dialed}@{DOMAIN}"
        self.shown_name = shown_name
        self.headers = dict(headers)
        self.cseq = 0
        self.branch = ""
        self.final: Response | None = None
        self.hung_up = False
        wire.phones[(peer.host, peer.port)] = self

    def invite(self, authorization: str | None = None) -> None:
        self.cseq += 1
        self.branch = f"z9hG4bKcaller{self.cseq}"
        extra = [f"{name}: {value}" for name, value in self.headers.items()]
        if authorization is not None:
            extra.append(f"Proxy-Authorization: {authorization}")
        self.wire.to_pbx(_request([
            *self._lines("INVITE", self.request_uri, self.branch, to_tag=None),
            f"Contact: <sip:{self.user}@{self.peer.host}:{self.peer.port};transport=udp>",
            *extra,
            "Content-Type: application/sdp",
        ], SDP), self.peer)

    def cancel(self) -> None:
        """Hang up while it rings (RFC 3261 §9.1)."""
        if self.final is None and not self.hung_up:
            self.hung_up = True
            self.wire.to_pbx(_request(self._lines("CANCEL", self.request_uri, self.branch,
                                                  to_tag=None)), self.peer)

    def receive(self, message: Request | Response) -> None:
        if isinstance(message, Request):
            if message.method != "ACK":
                self.wire.to_pbx(make_response(message, 200), self.peer)  # a BYE, a refresh
            return
        status = message.status
        if status < 200 or message.cseq.method != "INVITE" or message.cseq.number != self.cseq:
            return
        to_tag = message.to_addr.tag
        if status >= 300:  # §17.1.1.3: the ACK of a failure is part of its transaction
            self.wire.to_pbx(_request(self._lines("ACK", self.request_uri, self.branch,
                                                  to_tag=to_tag)), self.peer)
        else:
            target = message.contacts[0].uri_text if message.contacts else self.request_uri
            self.wire.to_pbx(_request(self._lines("ACK", target, f"{self.branch}ack",
                                                  to_tag=to_tag)), self.peer)
        if status == 407 and self.cseq == 1:
            self.invite(_credentials(message, "proxy-authenticate", self.user, self.password,
                                     "INVITE", self.request_uri))
        elif self.final is None:
            self.final = message

    def _lines(self, method: str, uri: str, branch: str, *, to_tag: str | None) -> list[str]:
        shown = f"{quote_string(self.shown_name)} " if self.shown_name else ""
        return [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.peer.host}:{self.peer.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: {shown}<sip:{self.user}@{DOMAIN}>;tag=caller-{self.user}",
            f"To: <{self.request_uri}>" + (f";tag={to_tag}" if to_tag else ""),
            "Call-ID: call@pbx.testing",
            f"CSeq: {self.cseq} {method}",
        ]


def _request(lines: list[str], body: bytes = b"") -> Request:
    data = ("\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode() + body
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def _credentials(challenge: Response, header: str, user: str, password: str, method: str,
                 uri: str) -> str:
    chosen = select_challenge(Challenge.parse(value) for value in challenge.headers.values(header))
    if chosen is None:
        raise RuntimeError(f"the PBX's {challenge.status} offered no usable challenge")
    return authorization_for(chosen, username=user, password=password, method=method, uri=uri,
                             cnonce="pbx.testing").to_header_value()


def _status_of(script: DialResult) -> tuple[int, str | None]:
    """The final response a phone scripted with `script` sends."""
    if isinstance(script, Failed):
        return script.status, script.reason or None
    if isinstance(script, (Busy, Unavailable, Declined)):
        return script.status, None
    raise TypeError(f"not a final response: {script!r}")


# -------------------------------------------------------------- the PBX


class Office:
    """The PBX on a test clock, with a phone for each scripted extension and the caller."""

    def __init__(self, *, handler: Handler, caller: str, caller_shown_name: str | None,
                 dialed: str, headers: Mapping[str, str], scripts: Mapping[str, PhoneScript],
                 users: Iterable[str], names: Mapping[str, str], unregistered: Iterable[str],
                 caller_hangs_up_on: str | None) -> None:
        from pbx.config import parse_config
        from pbx.service import PbxService

        self.clock = Clock()
        self.clock.advance(1_000_000)
        scripts = dict(scripts)
        if caller_hangs_up_on is not None and caller_hangs_up_on not in scripts:
            scripts[caller_hangs_up_on] = NoAnswer()
        extensions = {key for key in scripts if not _is_uri(key)}
        everyone = {*users, *extensions, caller}
        config = parse_config({
            "pbx": {"data_dir": "pbx.testing"},  # never created: the store is not opened
            "sip": {"domain": DOMAIN, "udp": f"{PBX_ADDRESS[0]}:{PBX_ADDRESS[1]}"},
            "users": {user: {"password": _password(user),
                             **({"name": names[user]} if user in names else {})}
                      for user in sorted(everyone)},
        }, "<pbx.testing>")
        self.service = PbxService(config, reactor=self.clock)
        self.service.dialplan.handler = handler
        self.wire = Wire(self.service)
        port = FIRST_PHONE_PORT
        self.phones: dict[str, ScriptedPhone] = {}
        for key, script in scripts.items():
            if _is_uri(key):
                peer = _peer_of_uri(key)
            else:
                if key in unregistered:
                    continue
                peer, port = Peer("udp", "127.0.0.1", port), port + 1
            phone = ScriptedPhone(self.wire, peer, key, script, self.clock)
            self.phones[key] = phone
            if not _is_uri(key):
                phone.register()
        self.wire.settle()
        for key, phone in self.phones.items():
            if not phone.registered and not _is_uri(key):
                raise RuntimeError(f"the phone of {key} could not register with the PBX")
        self.caller = CallerPhone(self.wire, Peer("udp", "127.0.0.1", port), caller,
                                  _password(caller), dialed, caller_shown_name, headers)
        if caller_hangs_up_on is not None and caller_hangs_up_on in self.phones:
            self.phones[caller_hangs_up_on].on_ringing = self.caller.cancel

    def drive(self, finished: Callable[[], bool], limit_s: float) -> None:
        """Deliver, then move the clock to the next timer, until `finished` (see `run`)."""
        clock = self.clock
        deadline = clock.seconds() + limit_s
        self.wire.settle()
        while not finished():
            pending = [delayed.getTime() for delayed in clock.getDelayedCalls()]
            if not pending or min(pending) > deadline:
                raise RuntimeError(
                    "the handler did not finish: it waited for something other than the "
                    f"call's own actions (limit: {limit_s:g} s of the PBX's time)")
            clock.advance(max(0.0, min(pending) - clock.seconds()))
            self.wire.settle()


def _is_uri(target: str) -> bool:
    return ":" in target


def _peer_of_uri(target: str) -> Peer:
    try:
        uri = parse_uri(target)
    except SipParseError as error:
        raise ValueError(f"answers: {target!r} is neither an extension nor a SIP URI") from error
    if not isinstance(uri, SipUri):
        raise ValueError(f"answers: {target!r} is not a SIP URI the PBX can call")
    return Peer("udp", uri.host.strip("[]"), uri.port or 5060)


def _password(user: str) -> str:
    return f"pbx.testing {user}"
