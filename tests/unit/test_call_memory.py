"""What an answered call keeps, and that an ended call is given back at once.

The whole service on a `Clock`, no sockets: the caller and the callee are
played here with the messages SIPp sends in bench/calls.py. A call is held
for every phone in the office at once, so what it keeps is the PBX's
memory budget (an active call under 20 KB): no parsed messages or
transactions once it is set up, and no reference cycles once it is over
(their memory would wait for the cyclic garbage collector, which the
service runs rarely).
"""

from __future__ import annotations

import gc
import types
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.core.call import B2buaCall
from pbx.core.calls import CallManager
from pbx.core.timers import Timers
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.message import Message, Request, Response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.transaction import Transaction

DOMAIN = "pbx.test"
CALLER = Peer("udp", "127.0.0.1", 6001)
CALLEE = Peer("udp", "127.0.0.1", 6002)
PASSWORDS = {"1001": "secret-1001", "1002": "secret-1002"}
SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
       b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
LINGER_S = 40.0  # past 64*T1: every transaction of the call is over


class Office:
    """The PBX and two phones on a test clock."""

    def __init__(self, tmp_path: Path) -> None:
        config = parse_config({
            "pbx": {"data_dir": str(tmp_path)},
            "sip": {"domain": DOMAIN, "udp": "127.0.0.1:5060"},
            "registrar": {"digest_algorithms": ["MD5"]},
            "users": {user: {"password": password} for user, password in PASSWORDS.items()},
        }, str(tmp_path / "pbx.toml"))
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.service = PbxService(config, reactor=self.clock)
        self.sent: list[tuple[bytes, int]] = []
        self.service.connections.udp_send = lambda data, host, port: self.sent.append(
            (data, port))
        self.invite_to_callee: Request | None = None
        self.first_ack: Request | None = None
        self.callee_tag = "callee-tag"

    @property
    def calls(self) -> CallManager:
        return self.service.calls

    def deliver(self, text: str | bytes, peer: Peer) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.service.endpoint.receive_data(data, peer, datagram=True)

    def take(self, peer: Peer) -> list[Request | Response]:
        mine = [parse_message(data) for data, port in self.sent if port == peer.port]
        self.sent = [(data, port) for data, port in self.sent if port != peer.port]
        return mine

    def responses(self, peer: Peer, status: int) -> list[Response]:
        return [m for m in self.take(peer) if isinstance(m, Response) and m.status == status]

    def wait(self, seconds: float) -> None:
        for _ in range(int(seconds * 2)):
            self.clock.advance(0.5)
        self.service._housekeeping()
        self.sent.clear()  # retransmissions

    def register_callee(self) -> None:
        def register(cseq: int, auth: str = "") -> None:
            self.deliver(
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:6002;branch=z9hG4bKreg{cseq};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:1002@{DOMAIN}>;tag=r\r\n"
                f"To: <sip:1002@{DOMAIN}>\r\nCall-ID: reg-1002\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:1002@127.0.0.1:6002;transport=udp>\r\nExpires: 3600\r\n"
                f"{auth}Content-Length: 0\r\n\r\n", CALLEE)

        register(1)
        (challenge,) = self.responses(CALLEE, 401)
        chosen = select_challenge(Challenge.parse(v)
                                  for v in challenge.headers.values("www-authenticate"))
        assert chosen is not None
        credentials = authorization_for(chosen, username="1002", password=PASSWORDS["1002"],
                                        method="REGISTER", uri=f"sip:{DOMAIN}", cnonce="cn")
        register(2, f"Authorization: {credentials.to_header_value()}\r\n")
        assert self.responses(CALLEE, 200)

    # ------------------------------------------------------------ the caller

    def caller_request(self, method: str, cseq: int, branch: str, *, to_tag: str = "",
                       extra: str = "", body: bytes = b"") -> str:
        to = f"<sip:1002@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else "")
        content_type = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:1002@{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:6001;branch=z9hG4bK{branch};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: \"Caller\" <sip:1001@{DOMAIN}>;tag=caller-tag\r\n"
                f"To: {to}\r\nCall-ID: call-1@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:1001@127.0.0.1:6001;transport=udp>\r\n{extra}{content_type}"
                f"Content-Length: {len(body)}\r\n\r\n") + body.decode()

    def dial(self) -> None:
        """INVITE, 407, ACK, INVITE with credentials: the callee's phone rings."""
        self.deliver(self.caller_request("INVITE", 1, "inv1", body=SDP), CALLER)
        (challenge,) = self.responses(CALLER, 407)
        self.deliver(self.caller_request("ACK", 1, "inv1", to_tag=challenge.to_addr.tag or ""),
                     CALLER)
        chosen = select_challenge(Challenge.parse(v)
                                  for v in challenge.headers.values("proxy-authenticate"))
        assert chosen is not None
        credentials = authorization_for(chosen, username="1001", password=PASSWORDS["1001"],
                                        method="INVITE", uri=f"sip:1002@{DOMAIN}", cnonce="c2")
        self.deliver(self.caller_request(
            "INVITE", 2, "inv2", body=SDP,
            extra=f"Proxy-Authorization: {credentials.to_header_value()}\r\n"), CALLER)
        (invite,) = [m for m in self.take(CALLEE) if isinstance(m, Request)]
        assert invite.method == "INVITE"
        self.invite_to_callee = invite
        self.callee_answers(180)

    def callee_answers(self, status: int, reason: str = "", body: bytes = b"",
                       request: Request | None = None) -> None:
        request = request or self.invite_to_callee
        assert request is not None
        head = "".join(f"{name}: {value}\r\n" for name, value in request.headers
                       if name.lower() in ("via", "from", "call-id", "cseq"))
        to = request.headers.get("to") or ""
        if ";tag=" not in to:
            to += f";tag={self.callee_tag}"
        content_type = "Content-Type: application/sdp\r\n" if body else ""
        self.deliver((f"SIP/2.0 {status} {reason or 'Whatever'}\r\n{head}To: {to}\r\n"
                      f"Contact: <sip:127.0.0.1:6002;transport=udp>\r\n{content_type}"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body, CALLEE)

    def answer(self) -> str:
        """The callee answers, the caller ACKs its 200; the PBX's To tag for the caller."""
        self.callee_answers(200, "OK", SDP)
        (ack,) = [m for m in self.take(CALLEE) if isinstance(m, Request)]
        assert ack.method == "ACK"
        self.first_ack = ack
        (ok,) = self.responses(CALLER, 200)
        to_tag = ok.to_addr.tag or ""
        self.deliver(self.caller_request("ACK", 2, "ack2", to_tag=to_tag), CALLER)
        return to_tag

    def callee_request(self, method: str) -> Request:
        """The callee's phone sends `method` in its dialog with the PBX."""
        invite = self.invite_to_callee
        assert invite is not None
        target = invite.contacts[0].uri_text
        from_value = invite.headers.get("from")
        to_value = invite.headers.get("to")
        text = (f"{method} {target} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:6002;branch=z9hG4bK{method.lower()}9;rport\r\n"
                f"Max-Forwards: 70\r\nFrom: {to_value};tag={self.callee_tag}\r\n"
                f"To: {from_value}\r\nCall-ID: {invite.call_id}\r\nCSeq: 7 {method}\r\n"
                f"Content-Length: 0\r\n\r\n")
        self.deliver(text, CALLEE)
        parsed = parse_message(text.encode())
        assert isinstance(parsed, Request)
        return parsed


def _reachable(root: object) -> Iterator[object]:
    """Everything `root` holds on to, short of the PBX itself and code.

    The call's services (the `CallManager` and the core's `Timers`), the
    clock, classes, modules and functions' globals are shared by every call
    and not followed; a function's closure is.
    """
    shared = (CallManager, Timers, Clock, type, types.ModuleType)
    seen = {id(root)}
    todo = [root]
    while todo:
        item = todo.pop()
        yield item
        if isinstance(item, types.FunctionType):
            referents: list[object] = [cell.cell_contents for cell in item.__closure__ or ()]
        else:
            referents = gc.get_referents(item)
        for referent in referents:
            if id(referent) in seen or isinstance(referent, shared):
                continue
            if isinstance(referent, dict) and "__builtins__" in referent:
                continue  # a module's globals
            seen.add(id(referent))
            todo.append(referent)


@pytest.fixture
def office(tmp_path: Path) -> Office:
    office = Office(tmp_path)
    office.register_callee()
    return office


def test_an_answered_call_keeps_no_messages_or_transactions(office: Office) -> None:
    office.dial()
    office.answer()
    office.wait(LINGER_S)  # the set-up's transactions are over
    (call,) = office.calls.calls

    held = [type(item).__name__ for item in _reachable(call)
            if isinstance(item, (Message, Transaction))]

    assert held == []
    # ... and it still works: the callee hangs up, both phones hear of it.
    office.callee_request("BYE")
    assert office.responses(CALLEE, 200)
    assert [m.method for m in office.take(CALLER) if isinstance(m, Request)] == ["BYE"]
    assert len(office.calls) == 0


def _caller_hangs_up(office: Office) -> None:
    to_tag = office.answer()
    office.wait(5)
    office.deliver(office.caller_request("BYE", 3, "bye3", to_tag=to_tag), CALLER)
    (bye,) = [m for m in office.take(CALLEE) if isinstance(m, Request)]
    assert bye.method == "BYE"
    office.callee_answers(200, "OK", request=bye)


def _callee_hangs_up(office: Office) -> None:
    office.answer()
    office.callee_request("BYE")
    (bye,) = [m for m in office.take(CALLER) if isinstance(m, Request)]
    assert bye.method == "BYE"


def _caller_cancels(office: Office) -> None:
    office.deliver(office.caller_request("CANCEL", 2, "inv2"), CALLER)
    (cancel,) = [m for m in office.take(CALLEE) if isinstance(m, Request)]
    assert cancel.method == "CANCEL"
    office.callee_answers(200, "OK", request=cancel)
    office.callee_answers(487, "Request Terminated")
    (terminated,) = office.responses(CALLER, 487)
    office.deliver(office.caller_request("ACK", 2, "inv2", to_tag=terminated.to_addr.tag or ""),
                   CALLER)


def _callee_busy(office: Office) -> None:
    office.callee_answers(486, "Busy Here")
    (busy,) = office.responses(CALLER, 486)
    office.deliver(office.caller_request("ACK", 2, "inv2", to_tag=busy.to_addr.tag or ""),
                   CALLER)


@pytest.mark.parametrize("ending", [_caller_hangs_up, _callee_hangs_up, _caller_cancels,
                                    _callee_busy], ids=lambda f: f.__name__.strip("_"))
def test_an_ended_call_is_freed_without_the_cyclic_collector(
        office: Office, ending: Callable[[Office], None]) -> None:
    gc.collect()
    gc.disable()
    try:
        office.dial()
        call = _the_call(office)
        ending(office)
        assert len(office.calls) == 0
        (record,) = office.service.cdr_queue.rows
        assert record[0] == "call-1@127.0.0.1"
        office.wait(LINGER_S)  # its transactions are over too

        assert call() is None, "the ended call waits for the cyclic garbage collector"
    finally:
        gc.enable()


def _the_call(office: Office) -> weakref.ref[B2buaCall]:
    (call,) = office.calls.calls
    return weakref.ref(call)


def test_a_retransmitted_2xx_gets_the_same_ack_again(office: Office) -> None:
    office.dial()
    office.answer()
    office.wait(2)  # the INVITE's transaction lasts 64*T1 after its 2xx
    office.callee_answers(200, "OK", SDP)  # our ACK was lost: the phone resends its 200
    (again,) = [m for m in office.take(CALLEE) if isinstance(m, Request)]
    first = office.first_ack
    assert again.method == "ACK" and first is not None
    assert again.to_bytes() == first.to_bytes()


def test_a_reinvite_after_set_up_is_relayed_and_acked_once(office: Office) -> None:
    office.dial()
    to_tag = office.answer()
    office.wait(LINGER_S)  # set-up let go of
    office.deliver(office.caller_request("INVITE", 3, "reinv3", to_tag=to_tag, body=SDP),
                   CALLER)
    (reinvite,) = [m for m in office.take(CALLEE) if isinstance(m, Request)]
    assert reinvite.method == "INVITE" and reinvite.body == SDP
    office.callee_answers(200, "OK", SDP, request=reinvite)
    assert [m.method for m in office.take(CALLEE) if isinstance(m, Request)] == ["ACK"]
    (ok,) = office.responses(CALLER, 200)
    assert ok.cseq.number == 3
    office.deliver(office.caller_request("ACK", 3, "ack3", to_tag=to_tag), CALLER)
    assert office.take(CALLEE) == []  # the caller's ACK is not the callee's business
    assert len(office.calls) == 1
