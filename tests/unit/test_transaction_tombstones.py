"""Answered non-INVITE server transactions over UDP as tombstones, and stateless answers.

The layer keeps Completed (RFC 3261 §17.2.2) of a non-INVITE server
transaction over UDP as its response's bytes only; these tests pin what that
must still do: re-send exactly those bytes to every retransmission until
64*T1, and no longer; stay within its bound; leave reliable transports and
the full machine (``max_tombstones=0``) alone. And §8.2.7's stateless answer.
"""

from __future__ import annotations

import pytest

from pbx.sip.errors import LocalProtocolError
from pbx.sip.events import RequestReceived, TransactionTerminated
from pbx.sip.message import Request
from pbx.sip.transaction import (
    ServerTransaction,
    TransactionLayer,
    TransactionState,
    stateless_tag,
)
from tests.unit.transaction_helpers import UAC, drain, make_request, respond_to, still_alive

TIMER_J_S = 32.0  # 64*T1 with the default T1 of 500 ms


def receive(layer: TransactionLayer[str], request: Request, now: float
            ) -> ServerTransaction[str]:
    layer.receive_request(request, UAC, now)
    events = drain(layer)
    (received,) = [e for e in events if isinstance(e, RequestReceived)]
    return received.transaction


def test_a_retransmission_gets_the_same_bytes_until_timer_j_and_then_is_new() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("REGISTER")
    transaction = receive(layer, request, 0.0)
    layer.respond(transaction, respond_to(request, 200), 1.0)
    [answer] = layer.take_outgoing()
    assert [type(e) for e in drain(layer)] == [TransactionTerminated]
    assert transaction.state is TransactionState.COMPLETED
    assert len(layer) == 0 and layer.tombstones == 1
    assert layer.next_deadline() == 1.0 + TIMER_J_S

    for when in (2.0, 20.0, 1.0 + TIMER_J_S - 0.01):
        layer.handle_timer(when)
        layer.receive_request(request, UAC, when)
        [again] = layer.take_outgoing()
        assert (again.data, again.destination) == (answer.data, UAC)
        assert drain(layer) == []  # nothing goes up

    layer.handle_timer(1.0 + TIMER_J_S)
    assert layer.tombstones == 0 and layer.next_deadline() is None
    layer.receive_request(request, UAC, 40.0)
    assert [type(e) for e in drain(layer)] == [RequestReceived]  # a new request now


def test_the_transaction_object_is_not_kept_by_its_tombstone() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS")
    transaction = receive(layer, request, 0.0)
    layer.respond(transaction, respond_to(request, 200), 0.0)
    drain(layer)
    layer.take_outgoing()
    kind, ident = type(transaction), id(transaction)
    del transaction
    assert still_alive([ident], kind) == 0
    assert layer.tombstones == 1


def test_the_oldest_tombstone_goes_first_past_the_bound() -> None:
    layer: TransactionLayer[str] = TransactionLayer(max_tombstones=3)
    requests = [make_request("OPTIONS", branch=f"z9hG4bK-{n}") for n in range(4)]
    for n, request in enumerate(requests):
        transaction = receive(layer, request, float(n))
        layer.respond(transaction, respond_to(request, 200), float(n))
    layer.take_outgoing()
    drain(layer)
    assert layer.tombstones == 3

    layer.receive_request(requests[0], UAC, 5.0)  # evicted: a new request again
    assert [type(e) for e in drain(layer)] == [RequestReceived]
    for request in requests[1:]:
        layer.receive_request(request, UAC, 5.0)
        assert len(layer.take_outgoing()) == 1
        assert drain(layer) == []


def test_past_the_bound_a_stateless_echo_goes_when_no_timer_j_tombstone_is_left() -> None:
    layer: TransactionLayer[str] = TransactionLayer(max_tombstones=2)
    challenged = [make_request("REGISTER", branch=f"z9hG4bK-c{n}") for n in range(2)]
    for request in challenged:
        transaction = receive(layer, request, 0.0)
        layer.respond_statelessly(transaction, respond_to(request, 401), 0.0)
    assert layer.tombstones == 2  # both echoes, no Timer J tombstone yet
    request = make_request("REGISTER", branch="z9hG4bK-ok")
    transaction = receive(layer, request, 0.1)
    layer.respond(transaction, respond_to(request, 200), 0.1)
    layer.take_outgoing()
    drain(layer)
    assert layer.tombstones == 2
    layer.receive_request(challenged[0], UAC, 0.2)  # its echo made room
    assert [type(e) for e in drain(layer)] == [RequestReceived]
    for kept in (challenged[1], request):
        layer.receive_request(kept, UAC, 0.2)
        assert len(layer.take_outgoing()) == 1 and drain(layer) == []


def test_provisional_and_reliable_and_whole_machines_keep_their_object() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS", branch="z9hG4bK-p")
    transaction = receive(layer, request, 0.0)
    layer.respond(transaction, respond_to(request, 100), 0.0)
    assert layer.tombstones == 0 and len(layer) == 1  # Proceeding is not Completed

    over_tcp = make_request("OPTIONS", branch="z9hG4bK-t", transport="TCP")
    transaction = receive(layer, over_tcp, 0.0)
    layer.respond(transaction, respond_to(over_tcp, 200), 0.0)
    assert transaction.state is TransactionState.TERMINATED  # Timer J is zero
    assert layer.tombstones == 0

    whole: TransactionLayer[str] = TransactionLayer(max_tombstones=0)
    request = make_request("OPTIONS")
    transaction = receive(whole, request, 0.0)
    whole.respond(transaction, respond_to(request, 200), 0.0)
    assert len(whole) == 1 and whole.tombstones == 0


def test_respond_statelessly_ends_the_transaction_and_echoes_only_briefly() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("REGISTER")
    transaction = receive(layer, request, 0.0)
    layer.respond_statelessly(transaction, respond_to(request, 401, stateless_tag(request)), 0.0)
    [out] = layer.take_outgoing()
    assert out.destination == UAC and out.data.startswith(b"SIP/2.0 401")
    assert [type(e) for e in drain(layer)] == [TransactionTerminated]
    assert transaction.state is TransactionState.TERMINATED
    assert len(layer) == 0

    # Within 8*T1 a retransmission gets the very same bytes, and no new request.
    for at in (0.5, 1.5, 3.5):
        layer.receive_request(request, UAC, at)
        assert drain(layer) == []
        assert [o.data for o in layer.take_outgoing()] == [out.data]
    deadline = layer.next_deadline()
    assert deadline == pytest.approx(4.0)
    layer.handle_timer(4.0)
    assert layer.tombstones == 0

    layer.receive_request(request, UAC, 7.5)  # after the window: a new request
    assert [type(e) for e in drain(layer)] == [RequestReceived]
    assert stateless_tag(request) == stateless_tag(make_request("REGISTER"))


def test_a_stateless_answer_over_a_stream_is_not_kept() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("REGISTER")
    layer.receive_request(request, UAC, 0.0, reliable=True)
    [event] = drain(layer)
    assert isinstance(event, RequestReceived)
    layer.respond_statelessly(event.transaction,
                              respond_to(request, 401, stateless_tag(request)), 0.0)
    assert layer.tombstones == 0


def test_respond_statelessly_is_only_a_first_and_final_answer() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS")
    transaction = receive(layer, request, 0.0)
    with pytest.raises(LocalProtocolError):
        layer.respond_statelessly(transaction, respond_to(request, 180), 0.0)
    layer.respond(transaction, respond_to(request, 100), 0.0)
    with pytest.raises(LocalProtocolError):
        layer.respond_statelessly(transaction, respond_to(request, 200), 0.0)
