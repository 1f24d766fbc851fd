"""Each kind of request reaches its handler (`pbx.core.dispatcher`), as a phone sees it.

The whole service runs on a `Clock` with no sockets: phones are bytes handed
to the endpoint, and what it sends is captured with where it went. Each test
tells the kinds apart by the answer on the wire: the registrar's 401, the
call's 407, the OPTIONS 200 with its Allow, 481 for a dialog nobody owns, a
plugin's own status, and what a REFER gets inside and outside a call.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.dialplan import IncomingRequest
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.peer import Peer

CALLER = Peer("udp", "127.0.0.1", 5071)
CALLEE = Peer("udp", "127.0.0.1", 5072)
PASSWORDS = {"1001": "pw-1001", "1002": "pw-1002"}
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
      b"m=audio 40000 RTP/AVP 0\r\n"

DIALPLAN = '''\
from pbx.dialplan import Call, Referral, Reject


async def transfer_policy(referral: Referral) -> int:
    if referral.by != "caller":
        raise Reject(500, "Wrong party")
    if referral.refer_to == "<sip:1003@pbx.test>" and referral.referred_by is None:
        return 202
    raise Reject(488, "Not to there")


async def handle_call(call: Call) -> None:
    if call.headers.get("x-transfers") == "on":
        call.on_refer = transfer_policy
    await call.dial(call.dialed)
'''


class Phones:
    """The PBX on a test clock, and two phones that talk to it in bytes."""

    def __init__(self, tmp_path: Path) -> None:
        plan = tmp_path / "dialplan.py"
        plan.write_text(DIALPLAN)
        config = parse_config({
            "pbx": {"data_dir": str(tmp_path / "data")},
            "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
            "registrar": {"digest_algorithms": ["MD5"]},
            "dialplan": {"module": str(plan)},
            "users": {user: {"password": password} for user, password in PASSWORDS.items()},
        }, str(tmp_path / "pbx.toml"))
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.service = PbxService(config, reactor=self.clock)
        self.service.dialplan.load(config.dialplan.module)  # what starting the service does
        self.sent: list[tuple[int, bytes]] = []
        self.service.connections.udp_send = lambda data, host, port: self.sent.append(
            (port, data))
        self._branches = itertools.count(1)

    def to(self, peer: Peer) -> list[Request | Response]:
        return [parse_message(data) for port, data in self.sent if port == peer.port]

    def last(self, peer: Peer) -> Response:
        message = self.to(peer)[-1]
        assert isinstance(message, Response), message
        return message

    def send(self, peer: Peer, lines: list[str], body: bytes = b"") -> None:
        head = "\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n"
        self.service.endpoint.receive_data(head.encode() + body, peer, datagram=True)

    def request(self, method: str, uri: str, peer: Peer, user: str, cseq: int, *,
                call_id: str | None = None, to_tag: str | None = None,
                extra: tuple[str, ...] = (), body: bytes = b"") -> None:
        to = f"To: <{uri}>" if method != "REGISTER" else f"To: <sip:{user}@pbx.test>"
        self.send(peer, [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK-{next(self._branches)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@pbx.test>;tag=t{user}",
            to if to_tag is None else f"{to};tag={to_tag}",
            f"Call-ID: {call_id or method.lower() + '-' + user}@127.0.0.1",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{user}@127.0.0.1:{peer.port}>",
            *extra,
        ], body)

    def credentials(self, challenge: Response, user: str, method: str, uri: str) -> str:
        header = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
        [offer] = [c for c in map(Challenge.parse, challenge.headers.get_all(header))
                   if c.algorithm == "MD5"]
        value = authorization_for(offer, username=user, password=PASSWORDS[user],
                                  method=method, uri=uri, cnonce=f"c{user}").to_header_value()
        name = "Authorization" if challenge.status == 401 else "Proxy-Authorization"
        return f"{name}: {value}"

    def register(self, peer: Peer, user: str) -> None:
        self.request("REGISTER", "sip:pbx.test", peer, user, 1)
        challenge = self.last(peer)
        assert challenge.status == 401
        self.request("REGISTER", "sip:pbx.test", peer, user, 2, extra=(
            self.credentials(challenge, user, "REGISTER", "sip:pbx.test"),))
        assert self.last(peer).status == 200

    def call(self, *, transfers: bool) -> str:
        """1001 calls 1002, who answers; the caller's To tag (the PBX's A-leg tag)."""
        self.register(CALLEE, "1002")
        uri = "sip:1002@pbx.test"
        extra = ("Content-Type: application/sdp",
                 *(("X-Transfers: on",) if transfers else ()))
        self.request("INVITE", uri, CALLER, "1001", 1, call_id="call", extra=extra, body=SDP)
        challenge = self.last(CALLER)
        assert challenge.status == 407
        self.request("INVITE", uri, CALLER, "1001", 2, call_id="call", body=SDP, extra=(
            *extra, self.credentials(challenge, "1001", "INVITE", uri)))
        [invite] = [m for m in self.to(CALLEE) if isinstance(m, Request)
                    and m.method == "INVITE"]
        self.send(CALLEE, [
            "SIP/2.0 200 OK", f"Via: {invite.headers.get('Via')}",
            f"From: {invite.headers.get('From')}", f"To: {invite.headers.get('To')};tag=callee",
            f"Call-ID: {invite.headers.get('Call-ID')}", f"CSeq: {invite.headers.get('CSeq')}",
            "Contact: <sip:1002@127.0.0.1:5072>", "Content-Type: application/sdp",
        ], SDP)
        answer = self.last(CALLER)
        assert answer.status == 200
        tag = answer.to_addr.tag
        assert tag is not None
        self.request("ACK", uri, CALLER, "1001", 2, call_id="call", to_tag=tag)
        return tag


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[Phones]:
    made = Phones(tmp_path)
    yield made
    made.service.endpoint.stop()


def test_register_goes_to_the_registrar(phones: Phones) -> None:
    phones.request("REGISTER", "sip:pbx.test", CALLEE, "1002", 1)
    answer = phones.last(CALLEE)
    assert answer.status == 401 and answer.headers.get("WWW-Authenticate")


def test_a_new_invite_goes_to_the_calls(phones: Phones) -> None:
    phones.request("INVITE", "sip:1002@pbx.test", CALLER, "1001", 1,
                   extra=("Content-Type: application/sdp",), body=SDP)
    answer = phones.last(CALLER)
    assert answer.status == 407 and answer.headers.get("Proxy-Authenticate")


def test_options_is_answered_with_what_the_pbx_takes_refer_included(phones: Phones) -> None:
    phones.request("OPTIONS", "sip:pbx.test", CALLER, "1001", 1)
    answer = phones.last(CALLER)
    assert answer.status == 200
    allowed = {method.strip() for method in (answer.headers.get("Allow") or "").split(",")}
    assert {"INVITE", "REGISTER", "OPTIONS", "REFER"} <= allowed


def test_a_cancel_that_matches_no_invite_gets_481(phones: Phones) -> None:
    phones.request("CANCEL", "sip:1002@pbx.test", CALLER, "1001", 1)
    assert phones.last(CALLER).status == 481


@pytest.mark.parametrize("method", ["BYE", "INFO", "REFER", "MESSAGE"])
def test_a_request_in_a_dialog_nobody_owns_gets_481(phones: Phones, method: str) -> None:
    """RFC 3261 §12.2.2, whatever the method, REFER included."""
    phones.request(method, "sip:1002@pbx.test", CALLER, "1001", 5, to_tag="nobody",
                   extra=("Refer-To: <sip:1003@pbx.test>",) if method == "REFER" else ())
    answer = phones.last(CALLER)
    assert answer.status == 481
    assert answer.to_addr.tag == "nobody"  # the To tag as sent: no dialog of ours


def test_a_refer_outside_any_dialog_is_refused_with_403(phones: Phones) -> None:
    phones.request("REFER", "sip:1002@pbx.test", CALLER, "1001", 1,
                   extra=("Refer-To: <sip:1003@pbx.test>",))
    assert phones.last(CALLER).status == 403


@pytest.mark.parametrize("method", ["BYE", "INFO", "MESSAGE"])
def test_a_method_the_pbx_takes_only_in_dialogs_gets_481_outside_one(
        phones: Phones, method: str) -> None:
    phones.request(method, "sip:1002@pbx.test", CALLER, "1001", 1)
    assert phones.last(CALLER).status == 481


def test_a_plugin_method_goes_to_the_plugin_and_its_late_answer_goes_out(
        phones: Phones) -> None:
    """The plugin answers after its request's event: the answer is queued and flushed."""
    later: Deferred[int] = Deferred()
    seen: list[IncomingRequest] = []

    async def on_message(request: IncomingRequest) -> int:
        seen.append(request)
        return await later

    phones.service.plugins.add_request_handler("MESSAGE", on_message)
    phones.service.endpoint.request_handlers = phones.service.plugins.request_handlers
    uri = "sip:1002@pbx.test"
    phones.request("MESSAGE", uri, CALLER, "1001", 1, extra=("Content-Type: text/plain",),
                   body=b"hi")
    challenge = phones.last(CALLER)
    assert challenge.status == 407  # authenticated like a call, before the plugin sees it
    answered = len(phones.to(CALLER))
    phones.request("MESSAGE", uri, CALLER, "1001", 2, body=b"hi", extra=(
        "Content-Type: text/plain", phones.credentials(challenge, "1001", "MESSAGE", uri)))
    assert [request.body for request in seen] == [b"hi"] and seen[0].sender == "1001"
    assert len(phones.to(CALLER)) == answered  # the plugin has not decided yet

    later.callback(202)
    phones.clock.advance(0)  # the reactor's next turn
    answer = phones.last(CALLER)
    assert answer.status == 202 and answer.cseq.number == 2


def test_a_refer_in_a_call_with_no_hook_is_declined_with_603(phones: Phones) -> None:
    tag = phones.call(transfers=False)
    phones.request("REFER", "sip:1002@pbx.test", CALLER, "1001", 3, call_id="call",
                   to_tag=tag, extra=("Refer-To: <sip:1003@pbx.test>",))
    answer = phones.last(CALLER)
    assert answer.status == 603 and answer.cseq.method == "REFER"
    # The call goes on: nothing was sent to the callee for it.
    assert not [m for m in phones.to(CALLEE) if isinstance(m, Request)
                and m.method in ("REFER", "BYE")]


def test_a_refer_in_a_call_goes_to_the_dialplans_hook(phones: Phones) -> None:
    tag = phones.call(transfers=True)
    phones.request("REFER", "sip:1002@pbx.test", CALLER, "1001", 3, call_id="call",
                   to_tag=tag, extra=("Refer-To: <sip:1003@pbx.test>",))
    assert phones.last(CALLER).status == 202
    phones.request("REFER", "sip:1002@pbx.test", CALLER, "1001", 4, call_id="call",
                   to_tag=tag, extra=("Refer-To: <sip:1099@pbx.test>",))
    refused = phones.last(CALLER)
    assert (refused.status, refused.reason) == (488, "Not to there")


def test_a_refer_without_exactly_one_refer_to_is_a_bad_request(phones: Phones) -> None:
    """RFC 3515 §2.4.2, before any hook is asked."""
    tag = phones.call(transfers=True)
    phones.request("REFER", "sip:1002@pbx.test", CALLER, "1001", 3, call_id="call",
                   to_tag=tag)
    assert phones.last(CALLER).status == 400
    phones.request("REFER", "sip:1002@pbx.test", CALLER, "1001", 4, call_id="call",
                   to_tag=tag, extra=("Refer-To: <sip:1003@pbx.test>",
                                      "Refer-To: <sip:1099@pbx.test>"))
    assert phones.last(CALLER).status == 400


def test_what_a_call_sends_outside_any_event_goes_out_once_on_the_next_turn(
        phones: Phones) -> None:
    """Work done outside an event (here the service's stop hanging up) is queued and
    flushed by the reactor, once: each party gets one BYE."""
    phones.call(transfers=False)

    def byes(peer: Peer) -> int:
        return len([m for m in phones.to(peer) if isinstance(m, Request) and m.method == "BYE"])

    phones.service.calls.hangup_all()
    phones.clock.advance(0)
    assert (byes(CALLER), byes(CALLEE)) == (1, 1)


class Outcome:
    """A `ResponseOwner` that writes down what it is told."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def on_response(self, response: Response) -> None:
        self.heard.append(str(response.status))

    def on_failure(self, status: int) -> None:
        self.heard.append(f"failed {status}")

    def on_ended(self) -> None:
        self.heard.append("ended")


def outbound_options(n: int) -> Request:
    from pbx.sip.transaction import new_branch

    message = parse_message((
        "OPTIONS sip:1002@127.0.0.1:5072 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:pbx.test>;tag=pbx\r\nTo: <sip:1002@pbx.test>\r\n"
        f"Call-ID: out-{n}@pbx.test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_a_request_sent_outside_a_call_reports_its_outcome_to_its_owner(
        phones: Phones) -> None:
    """The seam for a plugin's NOTIFY or MESSAGE: responses and time-outs reach the owner."""
    dispatcher = phones.service.endpoint.dispatcher
    answered, unanswered = Outcome(), Outcome()
    assert dispatcher.send_request(outbound_options(1), CALLEE, answered) is not None
    assert dispatcher.send_request(outbound_options(2), CALLEE, unanswered) is not None
    phones.clock.advance(0)  # sent on the reactor's next turn
    sent = [m for m in phones.to(CALLEE) if isinstance(m, Request) and m.method == "OPTIONS"]
    assert [m.call_id for m in sent] == ["out-1@pbx.test", "out-2@pbx.test"]

    first = sent[0]
    phones.send(CALLEE, [
        "SIP/2.0 200 OK", f"Via: {first.headers.get('Via')}", f"From: {first.headers.get('From')}",
        f"To: {first.headers.get('To')};tag=phone", f"Call-ID: {first.call_id}",
        f"CSeq: {first.headers.get('CSeq')}"])
    assert answered.heard == ["200"]
    for _ in range(70):  # past Timer F (64*T1) and Timer K
        phones.clock.advance(0.5)
    assert answered.heard == ["200", "ended"]
    assert unanswered.heard == ["failed 408", "ended"]
