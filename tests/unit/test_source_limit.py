"""The per-source limit (`pbx.core.pike`) on an injected clock.

Through the service built on a `Clock` with no sockets (what it sends is
captured, as in test_guard_timing.py): a source over its limit gets no
answer, from exactly when it went over until exactly ``source_block_s``
later, while another address is answered throughout; the block is one
security log line. Then the limiter alone: the sliding window, and the
bound on the addresses it keeps.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pbx.config import parse_config
from pbx.core.pike import SourceLimiter, SourceLimits
from pbx.service import PbxService
from pbx.sip.peer import Peer

FLOODER = Peer("udp", "192.0.2.66", 5060)
OFFICE = Peer("udp", "198.51.100.10", 5060)
LIMIT = 20
WINDOW_S = 2.0
BLOCK_S = 30.0


def options(peer: Peer, index: int) -> bytes:
    lines = [
        "OPTIONS sip:pbx.test SIP/2.0",
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch=z9hG4bK-o{index};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@{peer.host}>;tag=o{index}",
        "To: <sip:pbx.test>",
        f"Call-ID: options-{index}@{peer.host}",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Wire:
    """The service on a Clock; every datagram it sends, by destination host."""

    def __init__(self, tmp_path: Path) -> None:
        config = parse_config({
            "pbx": {"data_dir": str(tmp_path)},
            "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
            "security": {"max_messages_per_source": LIMIT, "source_window_s": WINDOW_S,
                         "source_block_s": BLOCK_S,
                         "log_file": str(tmp_path / "security.log")},
            "users": {"1001": {"password": "secret-1001"}},
        }, str(tmp_path / "pbx.toml"))
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.service = PbxService(config, reactor=self.clock)
        self.sent: dict[str, int] = {}
        self.service.connections.udp_send = self._sent
        self.index = 0
        self.log = tmp_path / "security.log"

    def _sent(self, data: bytes, host: str, port: int) -> None:
        self.sent[host] = self.sent.get(host, 0) + 1

    def send(self, peer: Peer, count: int = 1) -> int:
        """`count` OPTIONS from `peer`; how many were answered."""
        before = self.sent.get(peer.host, 0)
        for _ in range(count):
            self.index += 1
            self.service.endpoint.receive_data(options(peer, self.index), peer, datagram=True)
        return self.sent.get(peer.host, 0) - before

    def flood_lines(self) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if " flood " in line]


def test_a_source_over_its_limit_is_dropped_exactly_for_the_block_then_answered(
        tmp_path: Path) -> None:
    wire = Wire(tmp_path)
    # Up to the limit within the window, everything is answered.
    assert wire.send(FLOODER, LIMIT) == LIMIT
    # The next message goes over: dropped, and so is all it sends for BLOCK_S ...
    assert wire.send(FLOODER) == 0
    assert wire.send(OFFICE) == 1  # ... while another address is answered throughout.
    wire.clock.advance(BLOCK_S - 0.01)
    assert wire.send(FLOODER, 1) == 0
    assert wire.send(OFFICE) == 1
    # One line for the whole block, however much it sent.
    assert wire.send(FLOODER, 500) == 0
    [line] = wire.flood_lines()
    assert "pbx security flood from 192.0.2.66 user=- reason=" in line
    # Once the block is over and the source sends at a sane rate, it is answered again.
    wire.clock.advance(0.01 + 2 * WINDOW_S)
    assert wire.send(FLOODER) == 1
    assert len(wire.flood_lines()) == 1


def test_a_source_still_flooding_when_its_block_ends_is_blocked_again_and_reported_again(
        tmp_path: Path) -> None:
    wire = Wire(tmp_path)
    assert wire.send(FLOODER, LIMIT + 1) == LIMIT
    # It keeps sending ten times its limit, through the block and past its end.
    step_s = WINDOW_S / 10
    answered_after = 0
    for step in range(int((BLOCK_S + 5) / step_s)):
        wire.clock.advance(step_s)
        answered = wire.send(FLOODER, LIMIT)
        if (step + 1) * step_s < BLOCK_S:
            assert answered == 0
        else:
            answered_after += answered
    # Past the block's end its window is still full: blocked again at once, reported again.
    assert answered_after == 0
    assert len(wire.flood_lines()) == 2


def test_an_office_booting_behind_one_address_is_never_blocked_by_the_defaults() -> None:
    """100 phones, each: REGISTER, 401, REGISTER, 200, SUBSCRIBE, 200, and a
    retransmission of each request, all within one second (the PBX counts what
    it receives: 4 requests and 2 retransmissions a phone, its own answers not)."""
    limiter = SourceLimiter(SourceLimits())
    now = 0.0
    for message in range(100 * 6):
        now = message / 600
        assert limiter.allow("203.0.113.1", now), f"blocked at message {message}"
    # and again a window later, as the phones' second lines register
    for message in range(100 * 6):
        assert limiter.allow("203.0.113.1", now + WINDOW_S + message / 600)


def test_the_window_slides_a_burst_across_its_boundary_is_still_counted() -> None:
    limiter = SourceLimiter(SourceLimits(max_messages=10, window_s=1.0, block_s=5.0))
    # Nine at the end of one fixed window, nine at the start of the next: 18 within
    # 0.2 s, which a fixed window would let through.
    allowed = [limiter.allow("a", 0.9 + i * 0.01) for i in range(9)]
    allowed += [limiter.allow("a", 1.0 + i * 0.01) for i in range(9)]
    assert allowed.count(False) > 0
    assert limiter.is_blocked("a", 1.1)
    assert not limiter.is_blocked("a", 1.0 + 5.1)


def test_the_table_is_bounded_and_swept() -> None:
    limiter = SourceLimiter(SourceLimits(max_messages=5, window_s=1.0, max_tracked=100))
    for index in range(1000):
        assert limiter.allow(f"10.0.{index // 256}.{index % 256}", index * 0.0001)
    assert len(limiter) <= 100
    limiter.sweep(10.0)
    assert len(limiter) == 0


def test_zero_turns_the_limit_off() -> None:
    limiter = SourceLimiter(SourceLimits(max_messages=0))
    assert all(limiter.allow("a", 0.0) for _ in range(100_000))
    assert len(limiter) == 0


def test_memory_is_handed_back_once_a_flood_has_stopped(tmp_path: Path) -> None:
    """Housekeeping (each second) says so once, after a second with nothing dropped."""
    wire = Wire(tmp_path)
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        wire.send(FLOODER, 10 * LIMIT)
        wire.service._housekeeping()  # still dropping: not over
        wire.clock.advance(1.0)
        wire.send(FLOODER, 10 * LIMIT)
        wire.service._housekeeping()
        assert not [e for e in events if "Flood over" in str(e.get("log_format"))]
        wire.clock.advance(1.0)
        wire.service._housekeeping()  # a second with nothing dropped
        wire.clock.advance(1.0)
        wire.service._housekeeping()
    finally:
        globalLogPublisher.removeObserver(events.append)
    over = [e for e in events if "Flood over" in str(e.get("log_format"))]
    assert len(over) == 1
    assert over[0]["dropped"] == 20 * LIMIT - LIMIT
