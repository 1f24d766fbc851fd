"""Testing dialplans without a network: your handler on the PBX's own call logic.

A dialplan author writes ordinary pytest tests::

    from pbx.dialplan import Answered, Busy
    from pbx.testing import FakeCall, load_dialplan, run

    handler = load_dialplan("dialplans/office.py")

    def test_busy_extension_forwards_to_reception():
        call = FakeCall(dialed="1002", caller="1003",
                        users=["1001", "1002", "1003"],
                        answers={"1002": Busy(), "1001": Answered("1001")})
        run(handler, call)
        assert call.dialed_targets == [("1002",), ("1001",)]
        assert call.connected_to == "1001"

Nothing here decides what a call does. `run` starts a whole PBX in
memory, `pbx.service.PbxService` on a `twisted.internet.task.Clock`, and
phones that speak SIP to it: every extension of ``answers`` registers a
phone, the caller's phone sends the INVITE (and answers the PBX's 407), and
the PBX runs your handler as it runs any dialplan. So a dial rings what the
PBX's location service finds, forks, times out, cancels and ranks final
responses (RFC 3261 §16.7) with the code that does so on a live PBX, and
`final_status` is the status the caller's phone received.

``answers`` is what each phone does when the PBX's INVITE reaches it:

- `Answered`: rings, then answers (200 with SDP);
- `Busy`, `Declined`, `Unavailable`, `Failed`: answers that status at once
  (486 or 600, 603, 480 or 404..., any other);
- `NoAnswer`: rings until the PBX gives up on it (the dial's ``timeout_s``,
  on the PBX's own clock: no test waits for it).

An extension with no entry in ``answers`` has no phone registered (so is
`Unavailable` to a dial, as on a live PBX), and so has one listed in
``FakeUsers(unregistered=...)``. A key that is a SIP URI
(``"sip:2000@192.0.2.7"``) is a phone at that address, not a user. The
office's users are those of ``users``, the extensions of ``answers`` and
the caller (who authenticates, as every caller of the PBX does).

`FakeCall` is what the handler is given: a `pbx.dialplan.Call` whose
actions are handed to the PBX's own `Call` for this call, recording on the
way what the handler did (the dials with their timeouts and results, a
rejection, a hang-up, who got connected). While `run` lasts, its
``caller``, ``headers``, ``request_uri`` and ``users`` are the PBX's own
(the headers of the INVITE as it arrived, any case; ``users.is_registered``
true for the phones that registered). ``caller_hangs_up_on`` makes the
caller give up (CANCEL) as soon as that target rings; it rings even without
an entry in ``answers``.

`run` drives the handler to its end with no event loop: the PBX's clock is
moved on to its next timer whenever nothing is left to deliver, so a dial
that rings for 20 seconds takes no time. A handler that waits for
something else (a timer of its own, a socket) does not finish within
`run`'s ``limit_s`` of the PBX's time, and `run` says so. An exception in
the handler is raised again by `run` (the caller got 500, as on a live PBX).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.task import Clock

from pbx.core.call import display_name
from pbx.dialplan import (
    Answered,
    Busy,
    Call,
    CallEnded,
    Declined,
    DialResult,
    Failed,
    Handler,
    NoAnswer,
    Party,
    Unavailable,
)
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.errors import SipParseError
from pbx.sip.headers import quote_string
from pbx.sip.message import Request, Response, make_response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.uri import SipUri, parse_uri, user_of

__all__ = ["Attempt", "FakeCall", "FakeUsers", "load_dialplan", "run"]

DOMAIN = "pbx.test"
PBX_ADDRESS = ("127.0.0.1", 5060)
"""Where the PBX listens, as its phones and its Via and Contact say (nothing is bound)."""
RUN_LIMIT_S = 3600.0
"""How much of the PBX's time `run` lets a handler take: a long hunt, but not forever."""
_SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
_FIRST_PHONE_PORT = 5100


@dataclass(frozen=True, slots=True)
class Attempt:
    """One ``dial`` (or ``forward``) the handler made."""

    targets: tuple[str, ...]
    timeout_s: float
    result: DialResult


class FakeUsers:
    """The office's users for a test: who exists, their names, who has no phone registered."""

    def __init__(self, extensions: Iterable[str] = (), *, names: Mapping[str, str] | None = None,
                 unregistered: Iterable[str] = ()) -> None:
        self.extensions = frozenset(extensions)
        self.names: Mapping[str, str] = dict(names or {})
        self.unregistered = frozenset(unregistered)

    def exists(self, extension: str) -> bool:
        return extension in self.extensions

    def name(self, extension: str) -> str | None:
        return self.names.get(extension)

    def is_registered(self, extension: str) -> bool:
        """Before `run`: not listed as unregistered. During it, the PBX's own answer."""
        return extension in self.extensions and extension not in self.unregistered


# ------------------------------------------------------------ the phones


class _Station(Protocol):
    """Something at an address the PBX sends to: a phone, the caller."""

    def receive(self, message: Request | Response) -> None: ...


class _Wire:
    """Every datagram between the PBX and the phones, delivered one at a time, in order.

    The PBX's side is `PbxService`'s UDP output and its endpoint's input,
    the same two places tests/unit/test_call_memory.py plugs into; a phone's
    side is `_Phone.receive`. First in, first out: a phone's answer is
    delivered after whatever the PBX sent before it, as on a network.
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.phones: dict[tuple[str, int], _Station] = {}
        self._queue: deque[tuple[bytes, Peer, bool]] = deque()
        service.connections.udp_send = self._from_pbx

    def _from_pbx(self, data: bytes, host: str, port: int) -> None:
        self._queue.append((data, Peer("udp", host, port), False))

    def to_pbx(self, message: Request | Response, source: Peer) -> None:
        self._queue.append((message.to_bytes(), source, True))

    def settle(self) -> None:
        """Deliver until nobody has anything more to say."""
        queue = self._queue
        while queue:
            data, peer, to_pbx = queue.popleft()
            if to_pbx:
                self.service.endpoint.receive_data(data, peer, datagram=True)
                continue
            phone = self.phones.get((peer.host, peer.port))
            if phone is not None:  # else an address nobody answers at
                phone.receive(parse_message(data))


class _Phone:
    """A SIP phone at `peer`: registers its extension, answers INVITEs as scripted."""

    def __init__(self, wire: _Wire, peer: Peer, user: str, script: DialResult) -> None:
        self.wire = wire
        self.peer = peer
        self.user = user
        self.script = script
        self.password = f"pbx.testing {user}"
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
        if isinstance(script, (Answered, NoAnswer)):
            self._send(self._reply(invite, 180), branch)
            if self.on_ringing is not None:
                self.on_ringing()
            if isinstance(script, Answered) and branch not in self._finished:
                self._send(self._reply(invite, 200, body=_SDP), branch)
            return
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


class _Caller:
    """The caller's phone: INVITEs `dialed`, answers the 407, ACKs, can hang up."""

    def __init__(self, wire: _Wire, peer: Peer, user: str, password: str, dialed: str,
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
        ], _SDP), self.peer)

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


class _Office:
    """The PBX on a test clock, with a phone for each scripted extension and the caller."""

    def __init__(self, call: FakeCall, handler: Handler) -> None:
        from pbx.config import parse_config
        from pbx.service import PbxService

        self.clock = Clock()
        self.clock.advance(1_000_000)
        directory = call.directory
        scripts = dict(call.answers)
        hangs_up_on = call.caller_hangs_up_on
        if hangs_up_on is not None and hangs_up_on not in scripts:
            scripts[hangs_up_on] = NoAnswer()
        extensions = {key for key in scripts if not _is_uri(key)}
        users = directory.extensions | extensions | {call.caller_user}
        config = parse_config({
            "pbx": {"data_dir": "pbx.testing"},  # never created: the store is not opened
            "sip": {"domain": DOMAIN, "udp": f"{PBX_ADDRESS[0]}:{PBX_ADDRESS[1]}"},
            "users": {user: {"password": f"pbx.testing {user}",
                             **({"name": directory.names[user]}
                                if user in directory.names else {})}
                      for user in sorted(users)},
        }, "<pbx.testing>")
        self.service = PbxService(config, reactor=self.clock)
        self.service.dialplan.handler = handler
        self.wire = _Wire(self.service)
        port = _FIRST_PHONE_PORT
        self.phones: dict[str, _Phone] = {}
        for key, script in scripts.items():
            if _is_uri(key):
                peer = _peer_of_uri(key)
            else:
                if key in directory.unregistered:
                    continue
                peer, port = Peer("udp", "127.0.0.1", port), port + 1
            phone = _Phone(self.wire, peer, key, script)
            self.phones[key] = phone
            if not _is_uri(key):
                phone.register()
        self.wire.settle()
        for key, phone in self.phones.items():
            if not phone.registered and not _is_uri(key):
                raise RuntimeError(f"the phone of {key} could not register with the PBX")
        self.caller = _Caller(self.wire, Peer("udp", "127.0.0.1", port), call.caller_user,
                              f"pbx.testing {call.caller_user}", call.dialed,
                              display_name(call.caller_shown_name), call.invite_headers)
        if hangs_up_on is not None and hangs_up_on in self.phones:
            self.phones[hangs_up_on].on_ringing = self.caller.cancel

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


# ------------------------------------------------------------ the call


@dataclass(slots=True)
class _Record:
    """What the handler did and what came of it, for one `run`."""

    attempts: list[Attempt] = field(default_factory=list)
    elapsed_s: float | None = None
    rejections: list[tuple[int, str | None]] = field(default_factory=list)
    hung_up: bool = False


class _LiveControl:
    """FakeCall's `pbx.dialplan.CallControl`: each action is the PBX's, recorded on the way.

    ``live`` is the `Call` the PBX gave the dialplan for this call; its
    actions run the core's (`pbx.core.router`, `pbx.core.call`), and raise
    `CallEnded` themselves once the caller has gone.
    """

    def __init__(self, record: _Record) -> None:
        self.record = record
        self.live: Call | None = None

    def _call(self) -> Call:
        if self.live is None:
            raise RuntimeError("a FakeCall acts only while pbx.testing.run runs it")
        return self.live

    @property
    def answered(self) -> bool:
        return self.live is not None and self.live.answered

    @property
    def ended(self) -> bool:
        return False  # the PBX's Call raises CallEnded itself (see the class docstring)

    async def dial(self, targets: tuple[str, ...], timeout_s: float) -> DialResult:
        live = self._call()
        result: DialResult = NoAnswer()  # what a dial the caller walked away from returned
        try:
            if targets:
                result = await live.dial(*targets, timeout_s=timeout_s)
            else:
                # Only the caller's own extension: the PBX's forward to it rings
                # nobody and counts as tried, as the dial that filtered it out.
                result = await live.forward(live.caller.user or "", timeout_s=timeout_s)
        finally:
            self.record.attempts.append(Attempt(targets, timeout_s, result))
        return result

    def reject(self, status: int, reason: str | None) -> None:
        _at_once(self._call().reject(status, reason))
        self.record.rejections.append((status, reason))

    def hangup(self) -> None:
        _at_once(self._call().hangup())
        self.record.hung_up = True


def _at_once(action: Awaitable[None]) -> None:
    """Run an action of the PBX's `Call` that never waits (reject, hangup)."""
    coroutine: Coroutine[Any, Any, None] = action  # type: ignore[assignment]
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError(f"{coroutine!r} waited; it was expected to complete at once")


class FakeCall(Call):
    """A call for tests: the handler's `Call`, played on an in-memory PBX by `run`."""

    def __init__(
        self,
        *,
        dialed: str,
        caller: str = "1001",
        caller_name: str | None = None,
        users: Iterable[str] | FakeUsers = (),
        answers: Mapping[str, DialResult] | None = None,
        headers: Mapping[str, str] | None = None,
        caller_hangs_up_on: str | None = None,
        actions: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
        domain: str = DOMAIN,
    ) -> None:
        """``caller_hangs_up_on``: the caller gives up while this target rings.

        ``caller_name`` is the name the caller's phone shows; as on the PBX,
        the name the office configured for the caller (``users``' names)
        wins, and `Call.caller`'s ``display_name`` is that.
        """
        self.directory = users if isinstance(users, FakeUsers) else FakeUsers(users)
        self.answers: Mapping[str, DialResult] = dict(answers or {})
        self.caller_hangs_up_on = caller_hangs_up_on
        self.caller_user = caller
        self.caller_shown_name = caller_name
        self.invite_headers: Mapping[str, str] = dict(headers or {})
        self._live_control = _LiveControl(_Record())
        self._office: _Office | None = None
        super().__init__(
            caller=Party(user=caller, display_name=display_name(self.directory.name(caller))
                         or display_name(caller_name), uri=f"sip:{caller}@{domain}"),
            dialed=dialed,
            request_uri=f"sip:{dialed}@{domain}",
            headers={name.lower(): value for name, value in self.invite_headers.items()},
            users=self.directory,
            control=self._live_control,
            actions=actions,
        )

    def _attach(self, live: Call) -> None:
        """The PBX runs the dialplan for this call: from now on, act through `live`."""
        self._live_control.live = live
        self.caller = live.caller
        self.request_uri = live.request_uri
        self.headers = live.headers
        self.users = live.users
        live.outgoing_headers.update(self.outgoing_headers)
        self.outgoing_headers = live.outgoing_headers

    def _start(self, handler: Handler) -> _Office:
        self._live_control.record = _Record()
        self._live_control.live = None
        self._office = _Office(self, handler)
        return self._office

    @property
    def _record(self) -> _Record:
        return self._live_control.record

    @property
    def attempts(self) -> list[Attempt]:
        return self._record.attempts

    @property
    def dialed_targets(self) -> list[tuple[str, ...]]:
        """The targets of each dial, in order: ``[("1002",), ("1001",)]``."""
        return [attempt.targets for attempt in self._record.attempts]

    @property
    def connected_to(self) -> str | None:
        """The target whose phone answered, once the caller got the 200."""
        if self._final() is None or self.final_status != 200:
            return None
        return next((attempt.result.target for attempt in reversed(self._record.attempts)
                     if isinstance(attempt.result, Answered)), None)

    @property
    def rejected(self) -> tuple[int, str | None] | None:
        """The handler's ``reject`` that the caller got, as (status, reason)."""
        final = self._final()
        return next((rejection for rejection in self._record.rejections
                     if final is not None and rejection[0] == final.status), None)

    @property
    def hung_up(self) -> bool:
        """The handler hung up, or the caller did."""
        office = self._office
        return self._record.hung_up or (office is not None and office.caller.hung_up)

    @property
    def final_status(self) -> int:
        """The final status the caller's phone received (200 once connected)."""
        final = self._final()
        if final is None:
            raise RuntimeError("the caller has no final response: run(handler, call) first")
        return final.status

    @property
    def rang(self) -> dict[str, list[str]]:
        """Per scripted phone, the Request-URI of each INVITE the PBX sent it."""
        office = self._office
        if office is None:
            return {}
        return {key: [str(invite.uri) for invite in phone.rang]
                for key, phone in office.phones.items()}

    def requests_to(self, target: str) -> list[str]:
        """The methods of the requests the PBX sent `target`'s phone, in order."""
        office = self._office
        phone = office.phones.get(target) if office is not None else None
        return [] if phone is None else [request.method for request in phone.requests]

    @property
    def elapsed_s(self) -> float:
        """The PBX's time from the caller's INVITE to the handler's end (dial timers...)."""
        elapsed = self._record.elapsed_s
        if elapsed is None:
            raise RuntimeError("the handler has not run: run(handler, call) first")
        return elapsed

    def invites_to(self, target: str) -> list[Mapping[str, str]]:
        """The headers of each INVITE the PBX sent `target`'s phone (names lower-case)."""
        office = self._office
        phone = office.phones.get(target) if office is not None else None
        if phone is None:
            return []
        return [{name.lower(): value for name, value in invite.headers}
                for invite in phone.rang]

    def _final(self) -> Response | None:
        return self._office.caller.final if self._office is not None else None


@dataclass(slots=True)
class _Handling:
    """How far the PBX got with the handler in one `run`."""

    started: bool = False
    finished: bool = False
    failure: Exception | None = None


def run(handler: Handler, call: FakeCall, *, limit_s: float = RUN_LIMIT_S) -> None:
    """Place `call` on an in-memory PBX whose dialplan is `handler` (see the module docstring).

    Running the same `FakeCall` again starts over, on a new PBX.
    """
    if not isinstance(call, FakeCall):
        raise TypeError(f"run() places a pbx.testing.FakeCall, not {type(call).__name__}")
    handling = _Handling()

    async def dialplan(live: Call) -> None:
        handling.started = True
        call._attach(live)
        try:
            await handler(call)
        except CallEnded:
            raise
        except Exception as error:
            handling.failure = error
            raise  # the PBX answers the caller 500, as it does for any dialplan
        finally:
            handling.finished = True

    office = call._start(dialplan)
    started_at = office.clock.seconds()
    office.caller.invite()
    # Until the handler is done, or the PBX answered the caller without running it.
    office.drive(lambda: handling.finished or (
        not handling.started and office.caller.final is not None), limit_s)
    call._record.elapsed_s = office.clock.seconds() - started_at
    if handling.failure is not None:
        raise handling.failure
    if not handling.started:
        final = office.caller.final
        raise RuntimeError(f"the PBX answered the call {final.status if final else '?'} "
                           "before the dialplan ran")


def load_dialplan(path: str | Path) -> Handler:
    """The handler of a dialplan file, loaded exactly as the PBX loads it.

    A relative `path` is looked for, in this order: in the current
    directory; then in the directory of the file that calls
    ``load_dialplan`` (the test module) and in each of its parents, up to
    the root. So ``load_dialplan("dialplans/office.py")`` in
    ``tests/unit/test_office_dialplan.py`` finds the repository's file
    whether pytest runs from the repository, from ``tests/`` or from
    anywhere else. The first existing file wins. When there is none,
    `FileNotFoundError` names every place that was looked in; a file that
    exists but does not import raises `pbx.core.router.DialplanError`.
    """
    from pbx.core.router import DialplanLoader

    caller_file = sys._getframe(1).f_code.co_filename
    loader = DialplanLoader()
    loader.load(_find_dialplan(Path(path), Path(caller_file)))
    return loader.handler


def _find_dialplan(path: Path, caller_file: Path) -> Path:
    """Where a dialplan file named in a test is (the rule of `load_dialplan`)."""
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path]
        if caller_file.is_file():  # not "<stdin>" or "<string>"
            folder = caller_file.resolve().parent
            candidates += [base / path for base in (folder, *folder.parents)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = "\n".join(f"  {candidate}" for candidate in dict.fromkeys(candidates))
    raise FileNotFoundError(f"dialplan file {str(path)!r} not found; looked for:\n{looked}")
