"""A dialplan's ``timeout_s`` on the PBX's own clock: the callee is CANCELed then, not before.

The whole service is built on a `Clock` with no sockets: phones are bytes
handed to the endpoint, and what it sends is captured with where it went.
So "after one second" is exactly one second of the PBX's time, whatever the
machine's speed (tests/service/test_calls.py tells the same story over
real sockets, where only "not before" can be asserted).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.peer import Peer

CALLER = Peer("udp", "127.0.0.1", 5071)
CALLEE = Peer("udp", "127.0.0.1", 5072)
PASSWORDS = {"1001": "pw-1001", "1002": "pw-1002"}
DIAL_TIMEOUT_S = 1.0
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
      b"m=audio 40000 RTP/AVP 0\r\n"


class Wire:
    """Everything the PBX sends, by destination port, and a way to talk to it."""

    def __init__(self, service: PbxService) -> None:
        self.service = service
        self.sent: list[tuple[int, bytes]] = []
        service.connections.udp_send = lambda data, host, port: self.sent.append((port, data))

    def to(self, peer: Peer) -> list[Request | Response]:
        return [parse_message(data) for port, data in self.sent if port == peer.port]

    def send(self, peer: Peer, lines: list[str], body: bytes = b"") -> None:
        head = "\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n"
        self.service.endpoint.receive_data(head.encode() + body, peer, datagram=True)


def request_lines(method: str, uri: str, peer: Peer, user: str, cseq: int, branch: str,
                  extra: list[str]) -> list[str]:
    return [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK-{branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@pbx.test>;tag=t{user}",
        f"To: <{uri}>" if method == "INVITE" else f"To: <sip:{user}@pbx.test>",
        f"Call-ID: {method.lower()}-{user}@127.0.0.1",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{user}@127.0.0.1:{peer.port}>",
        *extra,
    ]


def credentials(challenge_response: Request | Response, header: str, user: str,
                method: str, uri: str) -> str:
    [challenge] = [c for c in map(Challenge.parse, challenge_response.headers.get_all(header))
                   if c.algorithm == "MD5"]
    return authorization_for(challenge, username=user, password=PASSWORDS[user],
                             method=method, uri=uri, cnonce=f"c{user}").to_header_value()


def status(message: Request | Response) -> int:
    assert isinstance(message, Response), message
    return message.status


def test_the_callee_is_cancelled_at_the_dial_timeout_and_the_caller_gets_408(
        tmp_path: Path) -> None:
    plan = tmp_path / "dialplan.py"
    plan.write_text("from pbx.dialplan import *  # noqa\n\n\nasync def handle_call(call):\n"
                    f"    await call.dial(call.dialed, timeout_s={DIAL_TIMEOUT_S})\n")
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path / "data")},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
        "registrar": {"digest_algorithms": ["MD5"]},
        "dialplan": {"module": str(plan)},
        "users": {user: {"password": password} for user, password in PASSWORDS.items()},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    clock.advance(1000.0)
    service = PbxService(config, reactor=clock)
    service.dialplan.load(config.dialplan.module)  # what starting the service does
    wire = Wire(service)

    # 1002 registers.
    register_uri = "sip:pbx.test"
    wire.send(CALLEE, request_lines("REGISTER", register_uri, CALLEE, "1002", 1, "r1", []))
    challenge = wire.to(CALLEE)[-1]
    assert status(challenge) == 401
    wire.send(CALLEE, request_lines("REGISTER", register_uri, CALLEE, "1002", 2, "r2", [
        "Authorization: " + credentials(challenge, "WWW-Authenticate", "1002", "REGISTER",
                                        register_uri)]))
    assert status(wire.to(CALLEE)[-1]) == 200

    # 1001 calls 1002, authenticating to the PBX's 407.
    invite_uri = "sip:1002@pbx.test"
    wire.send(CALLER, request_lines("INVITE", invite_uri, CALLER, "1001", 1, "i1",
                                    ["Content-Type: application/sdp"]), SDP)
    challenge = wire.to(CALLER)[-1]
    assert status(challenge) == 407
    wire.send(CALLER, request_lines("ACK", invite_uri, CALLER, "1001", 1, "i1", []))
    wire.send(CALLER, request_lines("INVITE", invite_uri, CALLER, "1001", 2, "i2", [
        "Content-Type: application/sdp",
        "Proxy-Authorization: " + credentials(challenge, "Proxy-Authenticate", "1001",
                                              "INVITE", invite_uri)]), SDP)
    [invite] = [m for m in wire.to(CALLEE) if isinstance(m, Request) and m.method == "INVITE"]
    dialled_at = clock.seconds()

    # The callee rings.
    via = invite.headers.get("Via")
    ringing = [
        "SIP/2.0 180 Ringing", f"Via: {via}", f"From: {invite.headers.get('From')}",
        f"To: {invite.headers.get('To')};tag=callee", f"Call-ID: {invite.headers.get('Call-ID')}",
        f"CSeq: {invite.headers.get('CSeq')}", "Contact: <sip:1002@127.0.0.1:5072>",
    ]
    wire.send(CALLEE, ringing)

    def cancels() -> list[Request]:
        return [m for m in wire.to(CALLEE) if isinstance(m, Request) and m.method == "CANCEL"]

    clock.advance(dialled_at + DIAL_TIMEOUT_S - 0.001 - clock.seconds())
    assert cancels() == []
    clock.advance(0.001)
    [cancel] = cancels()

    # The callee answers the CANCEL and its INVITE: the caller hears 408.
    cancel_ok = [
        "SIP/2.0 200 OK", f"Via: {cancel.headers.get('Via')}",
        f"From: {cancel.headers.get('From')}", f"To: {cancel.headers.get('To')};tag=callee",
        f"Call-ID: {cancel.headers.get('Call-ID')}", f"CSeq: {cancel.headers.get('CSeq')}",
    ]
    wire.send(CALLEE, cancel_ok)
    wire.send(CALLEE, ["SIP/2.0 487 Request Terminated", *ringing[1:6]])
    finals = [m for m in wire.to(CALLER) if isinstance(m, Response) and m.status >= 200
              and m.headers.get("CSeq") == "2 INVITE"]
    assert [m.status for m in finals] == [408]
