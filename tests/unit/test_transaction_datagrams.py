"""Retransmitted datagrams answered before parsing (`TransactionLayer.absorb_datagram`).

An exact copy of a recent request datagram must get what its match would
get through `receive_request` (the tombstone's bytes, a live transaction's
last response), nothing must go up, and everything else (other bytes, a
transaction gone, a request that came over a stream) must be left to the
normal path.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PbxService
from pbx.sip.events import RequestReceived
from pbx.sip.message import Request
from pbx.sip.peer import Peer
from pbx.sip.transaction import (
    MAX_REMEMBERED_DATAGRAMS,
    ServerTransaction,
    TransactionLayer,
)
from tests.unit.transaction_helpers import UAC, drain, make_request, respond_to

TIMER_J_S = 32.0
ECHO_S = 4.0  # stateless_echo_s: 8*T1


def receive(layer: TransactionLayer[str], request: Request, now: float, *,
            raw: bytes | None) -> ServerTransaction[str]:
    layer.receive_request(request, UAC, now, raw=raw)
    (received,) = [e for e in drain(layer) if isinstance(e, RequestReceived)]
    return received.transaction


def test_a_copy_of_an_answered_request_gets_the_tombstones_bytes_unparsed() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("REGISTER")
    raw = request.to_bytes()
    transaction = receive(layer, request, 0.0, raw=raw)
    layer.respond(transaction, respond_to(request, 200), 0.0)
    [answer] = layer.take_outgoing()
    drain(layer)

    assert layer.absorb_datagram(bytes(raw), 0.5)  # equal bytes, another object
    [again] = layer.take_outgoing()
    assert (again.data, again.destination) == (answer.data, UAC)
    assert drain(layer) == []
    assert layer.datagrams_absorbed == 1


def test_other_bytes_are_left_to_the_parser_even_when_they_match() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS")
    raw = request.to_bytes()
    transaction = receive(layer, request, 0.0, raw=raw)
    layer.respond(transaction, respond_to(request, 200), 0.0)
    layer.take_outgoing()
    # The same transaction, written with another Max-Forwards: a match for
    # receive_request, but not a byte-for-byte copy.
    edited = raw.replace(b"Max-Forwards: 70", b"Max-Forwards: 69")
    assert edited != raw
    assert not layer.absorb_datagram(edited, 0.5)
    assert layer.take_outgoing() == [] and layer.datagrams_absorbed == 0


def test_a_copy_of_a_live_transactions_request_gets_its_last_response() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request("INVITE")
    raw = invite.to_bytes()
    transaction = receive(layer, invite, 0.0, raw=raw)
    layer.respond(transaction, respond_to(invite, 180), 0.1)
    [ringing] = layer.take_outgoing()
    assert layer.absorb_datagram(raw, 0.6)
    [again] = layer.take_outgoing()
    assert again.data == ringing.data
    assert drain(layer) == []


def test_a_stateless_challenge_is_echoed_for_its_window_and_then_not() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("REGISTER")
    raw = request.to_bytes()
    transaction = receive(layer, request, 0.0, raw=raw)
    layer.respond_statelessly(transaction, respond_to(request, 401), 0.0)
    [challenge] = layer.take_outgoing()
    drain(layer)
    assert layer.absorb_datagram(raw, 3.0)
    assert [o.data for o in layer.take_outgoing()] == [challenge.data]
    layer.handle_timer(ECHO_S)
    assert not layer.absorb_datagram(raw, ECHO_S)  # the echo is over: a new request
    assert layer.take_outgoing() == []


def test_nothing_is_absorbed_once_the_tombstone_is_gone() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS")
    raw = request.to_bytes()
    transaction = receive(layer, request, 0.0, raw=raw)
    layer.respond(transaction, respond_to(request, 200), 0.0)
    layer.take_outgoing()
    layer.handle_timer(TIMER_J_S)
    assert layer.tombstones == 0
    assert not layer.absorb_datagram(raw, TIMER_J_S)


def test_requests_given_without_raw_bytes_are_not_remembered() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS", transport="TCP")
    transaction = receive(layer, request, 0.0, raw=None)
    layer.respond(transaction, respond_to(request, 200), 0.0)
    layer.take_outgoing()
    assert not layer.absorb_datagram(request.to_bytes(), 0.1)


def test_the_table_keeps_two_generations_of_the_echo_window() -> None:
    layer: TransactionLayer[str] = TransactionLayer(max_tombstones=0)
    first = make_request("INVITE", branch="z9hG4bK-first")
    receive(layer, first, 0.0, raw=first.to_bytes())
    later = make_request("INVITE", branch="z9hG4bK-later")
    receive(layer, later, ECHO_S + 0.1, raw=later.to_bytes())  # a second generation
    layer.take_outgoing()
    assert layer.absorb_datagram(first.to_bytes(), ECHO_S + 0.2)
    last = make_request("INVITE", branch="z9hG4bK-last")
    receive(layer, last, 2 * ECHO_S + 0.2, raw=last.to_bytes())  # a third: the first is out
    layer.take_outgoing()
    assert not layer.absorb_datagram(first.to_bytes(), 2 * ECHO_S + 0.3)
    assert layer.absorb_datagram(later.to_bytes(), 2 * ECHO_S + 0.3)


def test_a_flood_cannot_grow_the_table_past_two_generations() -> None:
    layer: TransactionLayer[str] = TransactionLayer(max_tombstones=0)
    for n in range(MAX_REMEMBERED_DATAGRAMS * 2 + 10):
        layer._remember_datagram(b"%d" % n, f"key {n}", 0.0)
    assert len(layer._datagrams) + len(layer._datagrams_old) <= 2 * MAX_REMEMBERED_DATAGRAMS


# --------------------------------------------------------- through the endpoint

PHONE = Peer("udp", "127.0.0.1", 5062)


def register(n: int) -> bytes:
    return (
        "REGISTER sip:pbx.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-d{n};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:1001@pbx.test>;tag=f{n}\r\n"
        "To: <sip:1001@pbx.test>\r\n"
        f"Call-ID: datagrams-{n}@127.0.0.1\r\n"
        "CSeq: 1 REGISTER\r\n"
        "Contact: <sip:1001@127.0.0.1:5062>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def service_on_a_clock(tmp_path: Path) -> tuple[PbxService, list[bytes]]:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
        "users": {"1001": {"password": "secret"}},
    }, str(tmp_path / "pbx.toml"))
    service = PbxService(config, reactor=Clock())
    sent: list[bytes] = []
    service.connections.udp_send = lambda data, host, port: sent.append(data)
    return service, sent


def test_the_endpoint_answers_a_retransmitted_register_with_the_same_challenge(
        tmp_path: Path) -> None:
    service, sent = service_on_a_clock(tmp_path)
    endpoint = service.endpoint
    endpoint.receive_data(register(1), PHONE, datagram=True)
    endpoint.receive_data(register(1), PHONE, datagram=True)
    assert len(sent) == 2 and sent[0].startswith(b"SIP/2.0 401") and sent[1] == sent[0]
    assert endpoint.layer.datagrams_absorbed == 1
    # The same bytes over TCP are not offered to the table: streams do not retransmit.
    endpoint.receive_data(register(2), Peer("tcp", "127.0.0.1", 5062), datagram=False)
    endpoint.receive_data(register(2), Peer("tcp", "127.0.0.1", 5062), datagram=False)
    assert endpoint.layer.datagrams_absorbed == 1


def test_a_broken_datagram_repeated_is_still_answered_each_time(tmp_path: Path) -> None:
    service, sent = service_on_a_clock(tmp_path)
    broken = register(3).replace(b"CSeq: 1 REGISTER", b"CSeq: one REGISTER")
    for _ in range(2):
        service.endpoint.receive_data(broken, PHONE, datagram=True)
    assert [s[:11] for s in sent] == [b"SIP/2.0 400", b"SIP/2.0 400"]
    assert service.endpoint.layer.datagrams_absorbed == 0



def test_the_remembered_datagrams_go_two_windows_after_the_last_request() -> None:
    """After a flood nothing may arrive to end a generation: housekeeping's sweep does."""
    layer: TransactionLayer[str] = TransactionLayer()
    for index in range(100):
        request = make_request(branch=f"z9hG4bK-sweep-{index}")
        receive(layer, request, 0.0, raw=request.to_bytes())
    assert layer.remembered_datagrams == 100
    layer.sweep(ECHO_S - 0.01)
    assert layer.remembered_datagrams == 100  # still in their window
    layer.sweep(ECHO_S)
    assert layer.remembered_datagrams == 100  # the previous generation now
    layer.sweep(2 * ECHO_S + 0.01)
    assert layer.remembered_datagrams == 0
