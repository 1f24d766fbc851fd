"""When the PBX answers a guessing phone: at once, after the slowdown, or refused at once.

The service is built on a `Clock` with no sockets (what it sends is
captured), so "answered late" means exactly `slowdown_s` later in the
PBX's own time, whatever the speed of the machine running the test. The
same story over real sockets is tests/service/test_guard.py.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for
from pbx.sip.message import parse_message
from pbx.sip.peer import Peer

PHONE = Peer("udp", "127.0.0.1", 5062)
SLOWDOWN_S = 0.3
PASSWORD = "right-1001"


class GuessingPhone:
    """A phone at `PHONE` that registers 1001, each time with the password it is given."""

    def __init__(self, service: PbxService) -> None:
        self.service = service
        self.sent: list[bytes] = []
        service.connections.udp_send = lambda data, host, port: self.sent.append(data)
        self.cseq = 0

    def register(self, authorization: str | None = None) -> None:
        self.cseq += 1
        lines = [
            "REGISTER sip:pbx.test SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-g{self.cseq};rport",
            "Max-Forwards: 70",
            "From: <sip:1001@pbx.test>;tag=guess",
            "To: <sip:1001@pbx.test>",
            "Call-ID: guessing@127.0.0.1",
            f"CSeq: {self.cseq} REGISTER",
            "Contact: <sip:1001@127.0.0.1:5062>",
            *([f"Authorization: {authorization}"] if authorization else []),
            "Content-Length: 0",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.service.endpoint.receive_data(data, PHONE, datagram=True)

    def answer(self, response: bytes, password: str) -> str:
        """The Authorization answering the MD5 challenge of `response`."""
        message = parse_message(response)
        [challenge] = [c for c in map(Challenge.parse, message.headers.get_all("WWW-Authenticate"))
                       if c.algorithm == "MD5"]
        return authorization_for(challenge, username="1001", password=password,
                                 method="REGISTER", uri="sip:pbx.test",
                                 cnonce=f"c{self.cseq}").to_header_value()

    def status(self, index: int) -> int:
        return int(self.sent[index].split(b" ", 2)[1])


def test_guesses_are_answered_at_once_then_late_then_refused_at_once(tmp_path: Path) -> None:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
        "registrar": {"digest_algorithms": ["MD5"]},
        "security": {"slowdown_after": 2, "slowdown_s": SLOWDOWN_S, "max_auth_failures": 4,
                     "failure_window_s": 60, "cooldown_s": 60},
        "users": {"1001": {"password": PASSWORD}},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    phone = GuessingPhone(PbxService(config, reactor=clock))

    phone.register()
    assert phone.status(-1) == 401

    # The first wrong password is answered at once.
    phone.register(phone.answer(phone.sent[-1], "guess1"))
    assert len(phone.sent) == 2 and phone.status(-1) == 401

    # From the second failure on, the challenge comes slowdown_s later, not before.
    for guess in ("guess2", "guess3"):
        before = len(phone.sent)
        phone.register(phone.answer(phone.sent[-1], guess))
        clock.advance(SLOWDOWN_S - 0.001)
        assert len(phone.sent) == before, f"{guess}: answered before the slowdown"
        clock.advance(0.001)
        assert len(phone.sent) == before + 1 and phone.status(-1) == 401

    # The fourth failure blocks the address: refused at once, with no challenge ...
    last_challenge = phone.sent[-1]
    phone.register(phone.answer(last_challenge, "guess4"))
    assert phone.status(-1) == 403
    assert b"WWW-Authenticate" not in phone.sent[-1]
    # ... and so is the right password, for the cool-down.
    before = len(phone.sent)
    phone.register(phone.answer(last_challenge, PASSWORD))
    assert len(phone.sent) == before + 1 and phone.status(-1) == 403
