"""The service's housekeeping forgets per-request state once its time is up.

Built on a `Clock`, no sockets: what the endpoint would send is captured.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

import pbx.service
from pbx.config import parse_config
from pbx.service import TRIM_AFTER_PEAK, PbxService
from pbx.sip.peer import Peer

PHONE = Peer("udp", "127.0.0.1", 5062)


def options(n: int) -> bytes:
    return (
        "OPTIONS sip:pbx.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-h{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:1001@pbx.test>;tag=f{n}\r\n"
        "To: <sip:pbx.test>\r\n"
        f"Call-ID: housekeeping-{n}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_merged_request_entries_go_once_their_transactions_are_over(tmp_path: Path) -> None:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
        "users": {"1001": {"password": "secret"}},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    service = PbxService(config, reactor=clock)
    sent: list[bytes] = []
    service.connections.udp_send = lambda data, host, port: sent.append(data)

    for n in range(20):
        service.endpoint.receive_data(options(n), PHONE, datagram=True)
    assert len(sent) == 20 and all(s.startswith(b"SIP/2.0 200") for s in sent)
    assert len(service.endpoint.dispatcher.merged) == 20  # each answered request is remembered

    # Timer J (64*T1 over UDP) and a little more, with no other traffic.
    for _ in range(40):
        clock.advance(1.0)
    service._housekeeping()

    assert len(service.endpoint.dispatcher.merged) == 0
    # ... and a retransmission of an old request is a new request again, not a loop.
    service.endpoint.receive_data(options(3), PHONE, datagram=True)
    assert sent[-1].startswith(b"SIP/2.0 200")



def test_an_entry_taken_again_by_a_later_request_outlives_the_first_ones_time(
        tmp_path: Path) -> None:
    """The sweep visits entries in the order they were answered; a key answered
    again since must stay for its own Timer J, not go at the first one's."""
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    service = PbxService(config, reactor=clock)
    sent: list[bytes] = []
    service.connections.udp_send = lambda data, host, port: sent.append(data)
    endpoint = service.endpoint

    endpoint.receive_data(options(1), PHONE, datagram=True)
    clock.advance(33.0)  # past Timer J, with no housekeeping in between
    endpoint.receive_data(options(1), PHONE, datagram=True)  # the same request, new again
    assert [s[:11] for s in sent] == [b"SIP/2.0 200", b"SIP/2.0 200"]
    service._housekeeping()
    assert len(endpoint.dispatcher.merged) == 1  # the second answer's Timer J runs until 65 s

    clock.advance(33.0)
    service._housekeeping()
    assert len(endpoint.dispatcher.merged) == 0


def test_memory_is_handed_back_once_a_burst_of_requests_is_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
        # 5,100 requests at once from one address are a flood to the source
        # limit (test_source_limit.py); here every one must be answered.
        "security": {"max_messages_per_source": 0},
    }, str(tmp_path / "pbx.toml"))
    clock = Clock()
    service = PbxService(config, reactor=clock)
    service.connections.udp_send = lambda data, host, port: None
    trims: list[float] = []
    # Whether glibc gives pages back is test_memory's business; here: when it is asked.
    monkeypatch.setattr(pbx.service, "give_back_free_memory", lambda: trims.append(clock.seconds()))

    for n in range(TRIM_AFTER_PEAK + 100):
        service.endpoint.receive_data(options(n), PHONE, datagram=True)
    service._housekeeping()  # the peak: every answered request is a tombstone
    for _ in range(10):
        clock.advance(1.0)
        service._housekeeping()
    assert trims == []  # still absorbing retransmissions: nothing to give back

    for _ in range(30):  # Timer J is over
        clock.advance(1.0)
        service._housekeeping()
    assert len(trims) == 1
    assert service.layer.tombstones == 0

    for _ in range(60):  # quiet afterwards: no trimming every second
        clock.advance(1.0)
        service._housekeeping()
    assert len(trims) == 1
