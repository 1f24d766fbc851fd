"""What an answered request leaves for Timer J holds nothing the garbage collector visits.

The PBX keeps every answered non-INVITE request of the last 32 s (Timer J;
REGISTER's 200s only for the short echo of stateless answers): its
response's bytes to answer retransmissions, and its merged-request entry.
At thousands a second that is hundreds of thousands of entries; held as
objects the collector tracks, every collection pass walked them all (passes
of 100 ms and more at 6,000 registrations/s, measured). Held as bytes and
tuples of plain values, the collector stops tracking them after their first
pass.
"""

from __future__ import annotations

import gc
from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PbxService
from pbx.sip.peer import Peer

PHONE = Peer("udp", "127.0.0.1", 5062)


def options(n: int) -> bytes:
    return (
        "OPTIONS sip:pbx.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-gc{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@pbx.test>;tag=same-phone\r\n"
        "To: <sip:pbx.test>\r\n"
        f"Call-ID: gc-{n}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def tracked_after_collections() -> int:
    gc.collect()
    gc.collect()  # a tuple is untracked once what it holds is
    return len(gc.get_objects())


def test_answered_requests_waiting_out_timer_j_are_not_tracked(tmp_path: Path) -> None:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path), "log_requests": False},  # no log events kept
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    service = PbxService(config, reactor=clock)
    sent: list[bytes] = []
    service.connections.udp_send = lambda data, host, port: sent.append(data)
    receive = service.endpoint.receive_data
    receive(options(0), PHONE, datagram=True)  # first-use caches filled
    clock.advance(5.0)
    before = tracked_after_collections()

    requests = 2_000
    for n in range(1, requests + 1):
        receive(options(n), PHONE, datagram=True)
    clock.advance(5.0)  # past the echo window of stateless answers, well within Timer J

    assert len(sent) == requests + 1 and sent[-1].startswith(b"SIP/2.0 200")
    assert service.layer.tombstones == requests + 1  # all still absorbing retransmissions
    assert len(service.endpoint.dispatcher.merged) == requests + 1
    growth = tracked_after_collections() - before
    assert growth < requests * 0.05, f"{growth / requests:.2f} tracked objects a request"


def test_answered_requests_leave_no_tracked_object_even_before_a_collection(
        tmp_path: Path) -> None:
    """Not even for one pass: a young collection visits every tracked object alive.

    A tuple of plain values is untracked by the first pass that sees it,
    but that pass still walks it and what it holds. The keys and expiry
    FIFOs of the transaction layer and of the merged-request table are
    strings, floats and bytes, so a registrar's young passes stay rare.
    """
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path), "log_requests": False},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    service = PbxService(config, reactor=clock)
    service.connections.udp_send = lambda data, host, port: None
    receive = service.endpoint.receive_data
    for n in range(200):  # caches filled, tables and deques grown
        receive(options(n), PHONE, datagram=True)
    requests = 2_000
    gc.disable()
    try:
        gc.collect()
        before = gc.get_count()[0]
        for n in range(1_000, 1_000 + requests):
            receive(options(n), PHONE, datagram=True)
        growth = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert service.layer.tombstones >= requests
    # Measured 0.5 a request (6.5 when the keys and FIFO entries were
    # tuples): each request's From, with its tag, is a new entry of the
    # parse caches (a header-line tuple, an address), bounded and shared.
    assert growth < requests * 1.5, f"{growth / requests:.2f} tracked objects a request"
