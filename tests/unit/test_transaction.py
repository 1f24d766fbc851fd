"""The transaction layer (RFC 3261 §17, RFC 6026): machines, ACK/CANCEL, matching, bounds.

Every (state, input) pair of the four machines is run against an expectation
written here from the RFC figures, independently of the library's own
tables: the state after, the messages on the wire, the events. Timers are in
``test_transaction_timers.py``, whole exchanges over a lossy link in
``test_transaction_pair.py``.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from pbx.sip.errors import LocalProtocolError
from pbx.sip.events import (
    AckReceived,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    StrayResponseReceived,
    TransactionTerminated,
    TransactionTimedOut,
    TransportErrorReported,
)
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Input,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TableFullError,
    Timer,
    Transaction,
    TransactionLayer,
    TransactionState,
    build_ack,
    new_branch,
)
from tests.unit.transaction_helpers import (
    BRANCH,
    UAC,
    UAS,
    I,
    S,
    drain,
    fire,
    label,
    make_ack,
    make_request,
    respond_to,
    sent,
    still_alive,
)

# ------------------------------------------------------ the machine tables

NOT_RUNNING = "the timer does not run in this state"
RAISES = "LocalProtocolError: the TU may not do this here"

RR, TT, TO = ResponseReceived, TransactionTerminated, TransactionTimedOut
TE, SR, RQ, AK = TransportErrorReported, StrayResponseReceived, RequestReceived, AckReceived

Outcome = tuple[TransactionState, tuple[str, ...], tuple[type, ...]] | str
Step = int | str | Timer  # a response status, "ACK", or a timer to fire


@dataclass
class Machine:
    name: str
    method: str
    is_client: bool
    status_of: dict[Input, int]  # the response each response input stands for
    paths: dict[TransactionState, list[Step]]  # how to reach each state
    expected: dict[tuple[TransactionState, Input], Outcome] = field(default_factory=dict)

    @property
    def inputs(self) -> list[Input]:
        return list(dict.fromkeys(i for _, i in self.expected))


CLIENT_INVITE = Machine(
    "client INVITE (RFC 3261 Fig. 5, RFC 6026 Fig. 5)", "INVITE", True,
    {I.PROVISIONAL: 180, I.SUCCESS: 200, I.FAILURE: 486},
    {S.CALLING: [], S.PROCEEDING: [180], S.COMPLETED: [486], S.ACCEPTED: [200],
     S.TERMINATED: [486, Timer.D]},
    {
        (S.CALLING, I.PROVISIONAL): (S.PROCEEDING, (), (RR,)),
        (S.CALLING, I.SUCCESS): (S.ACCEPTED, (), (RR,)),
        (S.CALLING, I.FAILURE): (S.COMPLETED, ("ACK",), (RR,)),
        (S.CALLING, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.CALLING, I.TIMER_A): (S.CALLING, ("INVITE",), ()),
        (S.CALLING, I.TIMER_B): (S.TERMINATED, (), (TO, TT)),
        (S.CALLING, I.TIMER_D): NOT_RUNNING,
        (S.CALLING, I.TIMER_M): NOT_RUNNING,
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, (), (RR,)),
        (S.PROCEEDING, I.SUCCESS): (S.ACCEPTED, (), (RR,)),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, ("ACK",), (RR,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.PROCEEDING, I.TIMER_A): NOT_RUNNING,  # no retransmissions after a 1xx
        (S.PROCEEDING, I.TIMER_B): NOT_RUNNING,  # the TU's own timer (Timer C) rules now
        (S.PROCEEDING, I.TIMER_D): NOT_RUNNING,
        (S.PROCEEDING, I.TIMER_M): NOT_RUNNING,
        (S.COMPLETED, I.PROVISIONAL): (S.COMPLETED, (), ()),
        (S.COMPLETED, I.SUCCESS): (S.COMPLETED, (), ()),
        (S.COMPLETED, I.FAILURE): (S.COMPLETED, ("ACK",), ()),  # re-ACK, TU not bothered
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.COMPLETED, I.TIMER_A): NOT_RUNNING,
        (S.COMPLETED, I.TIMER_B): NOT_RUNNING,
        (S.COMPLETED, I.TIMER_D): (S.TERMINATED, (), (TT,)),
        (S.COMPLETED, I.TIMER_M): NOT_RUNNING,
        (S.ACCEPTED, I.PROVISIONAL): (S.ACCEPTED, (), ()),
        (S.ACCEPTED, I.SUCCESS): (S.ACCEPTED, (), (RR,)),  # RFC 6026: to the TU, not ACKed
        (S.ACCEPTED, I.FAILURE): (S.ACCEPTED, (), ()),
        (S.ACCEPTED, I.TRANSPORT_ERROR): (S.ACCEPTED, (), ()),
        (S.ACCEPTED, I.TIMER_A): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_B): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_D): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_M): (S.TERMINATED, (), (TT,)),
        (S.TERMINATED, I.PROVISIONAL): (S.TERMINATED, (), (SR,)),
        (S.TERMINATED, I.SUCCESS): (S.TERMINATED, (), (SR,)),
        (S.TERMINATED, I.FAILURE): (S.TERMINATED, (), (SR,)),
        (S.TERMINATED, I.TRANSPORT_ERROR): (S.TERMINATED, (), ()),
        (S.TERMINATED, I.TIMER_A): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_B): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_D): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_M): NOT_RUNNING,
    },
)

CLIENT_NON_INVITE = Machine(
    "client non-INVITE (RFC 3261 Fig. 6)", "OPTIONS", True,
    {I.PROVISIONAL: 100, I.SUCCESS: 200, I.FAILURE: 404},
    {S.TRYING: [], S.PROCEEDING: [100], S.COMPLETED: [200], S.TERMINATED: [200, Timer.K]},
    {
        (S.TRYING, I.PROVISIONAL): (S.PROCEEDING, (), (RR,)),
        (S.TRYING, I.SUCCESS): (S.COMPLETED, (), (RR,)),
        (S.TRYING, I.FAILURE): (S.COMPLETED, (), (RR,)),
        (S.TRYING, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.TRYING, I.TIMER_E): (S.TRYING, ("OPTIONS",), ()),
        (S.TRYING, I.TIMER_F): (S.TERMINATED, (), (TO, TT)),
        (S.TRYING, I.TIMER_K): NOT_RUNNING,
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, (), (RR,)),
        (S.PROCEEDING, I.SUCCESS): (S.COMPLETED, (), (RR,)),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, (), (RR,)),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.PROCEEDING, I.TIMER_E): (S.PROCEEDING, ("OPTIONS",), ()),
        (S.PROCEEDING, I.TIMER_F): (S.TERMINATED, (), (TO, TT)),
        (S.PROCEEDING, I.TIMER_K): NOT_RUNNING,
        (S.COMPLETED, I.PROVISIONAL): (S.COMPLETED, (), ()),
        (S.COMPLETED, I.SUCCESS): (S.COMPLETED, (), ()),
        (S.COMPLETED, I.FAILURE): (S.COMPLETED, (), ()),
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.COMPLETED, (), ()),
        (S.COMPLETED, I.TIMER_E): NOT_RUNNING,
        (S.COMPLETED, I.TIMER_F): NOT_RUNNING,
        (S.COMPLETED, I.TIMER_K): (S.TERMINATED, (), (TT,)),
        (S.TERMINATED, I.PROVISIONAL): (S.TERMINATED, (), (SR,)),
        (S.TERMINATED, I.SUCCESS): (S.TERMINATED, (), (SR,)),
        (S.TERMINATED, I.FAILURE): (S.TERMINATED, (), (SR,)),
        (S.TERMINATED, I.TRANSPORT_ERROR): (S.TERMINATED, (), ()),
        (S.TERMINATED, I.TIMER_E): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_F): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_K): NOT_RUNNING,
    },
)

SERVER_INVITE = Machine(
    "server INVITE (RFC 3261 Fig. 7, RFC 6026 Fig. 7)", "INVITE", False,
    {I.PROVISIONAL: 180, I.SUCCESS: 200, I.FAILURE: 486},
    {S.PROCEEDING: [], S.COMPLETED: [486], S.CONFIRMED: [486, "ACK"], S.ACCEPTED: [200],
     S.TERMINATED: [486, "ACK", Timer.I]},
    {
        (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (), ()),  # nothing sent yet to re-send
        (S.PROCEEDING, I.ACK): (S.PROCEEDING, (), ()),
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, ("180",), ()),
        (S.PROCEEDING, I.SUCCESS): (S.ACCEPTED, ("200",), ()),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, ("486",), ()),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.PROCEEDING, (), (TE,)),
        (S.PROCEEDING, I.TIMER_TRYING): (S.PROCEEDING, ("100",), ()),
        (S.PROCEEDING, I.TIMER_G): NOT_RUNNING,
        (S.PROCEEDING, I.TIMER_H): NOT_RUNNING,
        (S.PROCEEDING, I.TIMER_I): NOT_RUNNING,
        (S.PROCEEDING, I.TIMER_L): NOT_RUNNING,
        (S.COMPLETED, I.REQUEST): (S.COMPLETED, ("486",), ()),
        (S.COMPLETED, I.ACK): (S.CONFIRMED, (), ()),  # absorbed, not passed up
        (S.COMPLETED, I.PROVISIONAL): RAISES,
        (S.COMPLETED, I.SUCCESS): RAISES,
        (S.COMPLETED, I.FAILURE): RAISES,
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.COMPLETED, (), (TE,)),
        (S.COMPLETED, I.TIMER_TRYING): NOT_RUNNING,
        (S.COMPLETED, I.TIMER_G): (S.COMPLETED, ("486",), ()),
        (S.COMPLETED, I.TIMER_H): (S.TERMINATED, (), (TO, TT)),
        (S.COMPLETED, I.TIMER_I): NOT_RUNNING,
        (S.COMPLETED, I.TIMER_L): NOT_RUNNING,
        (S.CONFIRMED, I.REQUEST): (S.CONFIRMED, (), ()),
        (S.CONFIRMED, I.ACK): (S.CONFIRMED, (), ()),
        (S.CONFIRMED, I.PROVISIONAL): RAISES,
        (S.CONFIRMED, I.SUCCESS): RAISES,
        (S.CONFIRMED, I.FAILURE): RAISES,
        (S.CONFIRMED, I.TRANSPORT_ERROR): (S.CONFIRMED, (), ()),
        (S.CONFIRMED, I.TIMER_TRYING): NOT_RUNNING,
        (S.CONFIRMED, I.TIMER_G): NOT_RUNNING,
        (S.CONFIRMED, I.TIMER_H): NOT_RUNNING,
        (S.CONFIRMED, I.TIMER_I): (S.TERMINATED, (), (TT,)),
        (S.CONFIRMED, I.TIMER_L): NOT_RUNNING,
        (S.ACCEPTED, I.REQUEST): (S.ACCEPTED, (), ()),  # RFC 6026: absorbed, TU re-sends 2xx
        (S.ACCEPTED, I.ACK): (S.ACCEPTED, (), (AK,)),
        (S.ACCEPTED, I.PROVISIONAL): RAISES,
        (S.ACCEPTED, I.SUCCESS): (S.ACCEPTED, ("200",), ()),  # the TU's 2xx retransmission
        (S.ACCEPTED, I.FAILURE): RAISES,
        (S.ACCEPTED, I.TRANSPORT_ERROR): (S.ACCEPTED, (), (TE,)),
        (S.ACCEPTED, I.TIMER_TRYING): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_G): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_H): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_I): NOT_RUNNING,
        (S.ACCEPTED, I.TIMER_L): (S.TERMINATED, (), (TT,)),
        (S.TERMINATED, I.REQUEST): (S.TERMINATED, (), (RQ,)),  # a new transaction
        (S.TERMINATED, I.ACK): (S.TERMINATED, (), (AK,)),
        (S.TERMINATED, I.PROVISIONAL): RAISES,
        (S.TERMINATED, I.SUCCESS): RAISES,
        (S.TERMINATED, I.FAILURE): RAISES,
        (S.TERMINATED, I.TRANSPORT_ERROR): (S.TERMINATED, (), ()),
        (S.TERMINATED, I.TIMER_TRYING): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_G): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_H): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_I): NOT_RUNNING,
        (S.TERMINATED, I.TIMER_L): NOT_RUNNING,
    },
)

SERVER_NON_INVITE = Machine(
    "server non-INVITE (RFC 3261 Fig. 8)", "OPTIONS", False,
    {I.PROVISIONAL: 100, I.SUCCESS: 200, I.FAILURE: 404},
    {S.TRYING: [], S.PROCEEDING: [100], S.COMPLETED: [200], S.TERMINATED: [200, Timer.J]},
    {
        (S.TRYING, I.REQUEST): (S.TRYING, (), ()),
        (S.TRYING, I.ACK): (S.TRYING, (), (AK,)),  # an ACK never matches a non-INVITE
        (S.TRYING, I.PROVISIONAL): (S.PROCEEDING, ("100",), ()),
        (S.TRYING, I.SUCCESS): (S.COMPLETED, ("200",), ()),
        (S.TRYING, I.FAILURE): (S.COMPLETED, ("404",), ()),
        (S.TRYING, I.TRANSPORT_ERROR): (S.TRYING, (), ()),  # nothing was sent
        (S.TRYING, I.TIMER_J): NOT_RUNNING,
        (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, ("100",), ()),
        (S.PROCEEDING, I.ACK): (S.PROCEEDING, (), (AK,)),
        (S.PROCEEDING, I.PROVISIONAL): (S.PROCEEDING, ("100",), ()),
        (S.PROCEEDING, I.SUCCESS): (S.COMPLETED, ("200",), ()),
        (S.PROCEEDING, I.FAILURE): (S.COMPLETED, ("404",), ()),
        (S.PROCEEDING, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.PROCEEDING, I.TIMER_J): NOT_RUNNING,
        (S.COMPLETED, I.REQUEST): (S.COMPLETED, ("200",), ()),
        (S.COMPLETED, I.ACK): (S.COMPLETED, (), (AK,)),
        (S.COMPLETED, I.PROVISIONAL): RAISES,
        (S.COMPLETED, I.SUCCESS): RAISES,
        (S.COMPLETED, I.FAILURE): RAISES,
        (S.COMPLETED, I.TRANSPORT_ERROR): (S.TERMINATED, (), (TE, TT)),
        (S.COMPLETED, I.TIMER_J): (S.TERMINATED, (), (TT,)),
        (S.TERMINATED, I.REQUEST): (S.TERMINATED, (), (RQ,)),
        (S.TERMINATED, I.ACK): (S.TERMINATED, (), (AK,)),
        (S.TERMINATED, I.PROVISIONAL): RAISES,
        (S.TERMINATED, I.SUCCESS): RAISES,
        (S.TERMINATED, I.FAILURE): RAISES,
        (S.TERMINATED, I.TRANSPORT_ERROR): (S.TERMINATED, (), ()),
        (S.TERMINATED, I.TIMER_J): NOT_RUNNING,
    },
)

MACHINES = [CLIENT_INVITE, CLIENT_NON_INVITE, SERVER_INVITE, SERVER_NON_INVITE]


@dataclass
class Run:
    """One transaction of a machine brought to a state, outputs drained."""

    machine: Machine
    layer: TransactionLayer[str]
    transaction: Transaction[str]
    request: Request
    now: float = 0.0

    @classmethod
    def reach(cls, machine: Machine, state: TransactionState) -> Run:
        # The machines as drawn: no tombstones (those are tested on their own).
        layer: TransactionLayer[str] = TransactionLayer(max_tombstones=0)
        request = make_request(machine.method)
        transaction: Transaction[str]
        if machine.is_client:
            transaction = layer.send_request(request, UAS, 0.0)
        else:
            layer.receive_request(request, UAC, 0.0)
            event = layer.next_event()
            assert isinstance(event, RequestReceived)
            transaction = event.transaction
        run = cls(machine, layer, transaction, request)
        for step in machine.paths[state]:
            run.now += 0.01
            run.step(step)
        drain(layer)
        layer.take_outgoing()
        assert transaction.state is state
        return run

    def step(self, step: Step) -> None:
        if isinstance(step, Timer):
            assert fire(self.layer, self.transaction, step), step
            return
        if isinstance(step, str):  # "ACK"
            self.layer.receive_request(make_ack(self.request), UAC, self.now)
        elif self.machine.is_client:
            self.layer.receive_response(respond_to(self.request, step), UAS, self.now)
        else:
            assert isinstance(self.transaction, ServerTransaction)
            self.layer.respond(self.transaction, respond_to(self.request, step), self.now)

    def apply(self, event: Input) -> Outcome:
        if event.name.startswith("TIMER_"):
            if not fire(self.layer, self.transaction, Timer[event.name[6:]]):
                return NOT_RUNNING
        elif event is I.REQUEST:
            self.layer.receive_request(self.request, UAC, self.now)
        elif event is I.TRANSPORT_ERROR:
            self.layer.receive_transport_error(self.transaction, self.now)
        else:
            try:
                self.step("ACK" if event is I.ACK else self.machine.status_of[event])
            except LocalProtocolError:
                return RAISES
        labels = tuple(label(m) for m in sent(self.layer))
        events = tuple(type(e) for e in drain(self.layer))
        return (self.transaction.state, labels, events)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_expectations_cover_every_state_and_input(machine: Machine) -> None:
    pairs = {(state, event) for state in machine.paths for event in machine.inputs}
    assert set(machine.expected) == pairs


@pytest.mark.parametrize(
    ("machine", "state", "event"),
    [(m, s, i) for m in MACHINES for (s, i) in m.expected],
    ids=[f"{m.method}-{'client' if m.is_client else 'server'}-{s.name}-{i.name}"
         for m in MACHINES for (s, i) in m.expected],
)
def test_every_state_and_input(machine: Machine, state: TransactionState, event: Input) -> None:
    run = Run.reach(machine, state)
    expected = machine.expected[(state, event)]
    outcome = run.apply(event)
    assert outcome == expected
    if expected == RAISES:  # a refused command changes nothing
        assert run.transaction.state is state
        assert run.layer.take_outgoing() == []
        assert drain(run.layer) == []


# ------------------------------------------------------- ACK and CANCEL


def test_ack_for_a_non_2xx_is_built_by_the_transaction() -> None:
    """RFC 3261 §17.1.1.3: same branch, URI, Call-ID, From, CSeq number, Routes; To from the 486."""
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request(routes=["<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"])
    transaction = layer.send_request(invite, UAS, 0.0)
    layer.take_outgoing()
    layer.receive_response(respond_to(invite, 486, to_tag="callee-7"), UAS, 0.1)
    (out,) = layer.take_outgoing()
    assert out.destination == UAS and out.transaction is transaction
    ack = parse_message(out.data)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert [str(v) for v in ack.vias] == [str(invite.top_via)]
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.call_id == invite.call_id
    assert ack.headers.get("from") == invite.headers.get("from")
    assert ack.to_addr.tag == "callee-7"
    assert ack.to_addr.uri_text == invite.to_addr.uri_text
    assert (ack.cseq.number, ack.cseq.method) == (invite.cseq.number, "ACK")
    assert ack.headers.get_all("route") == invite.headers.get_all("route")
    assert ack.body == b""
    assert ack.max_forwards == 70


def test_ack_has_only_the_top_via_of_a_proxied_invite() -> None:
    invite = make_request(via="SIP/2.0/UDP proxy.example.org;branch=z9hG4bK-top, "
                              "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-below")
    ack = build_ack(invite, respond_to(invite, 404))
    assert [v.branch for v in ack.vias] == ["z9hG4bK-top"]


def test_retransmitted_final_response_is_acked_again_without_bothering_the_tu() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    layer.send_request(invite, UAS, 0.0)
    layer.take_outgoing()
    busy = respond_to(invite, 486)
    layer.receive_response(busy, UAS, 0.1)
    first = layer.take_outgoing()
    assert [type(e) for e in drain(layer)] == [ResponseReceived]
    layer.receive_response(busy, UAS, 0.6)
    again = layer.take_outgoing()
    assert [o.data for o in again] == [o.data for o in first]
    assert drain(layer) == []


def test_2xx_is_not_acked_by_the_transaction_and_retransmissions_go_up() -> None:
    """RFC 6026 §7.2: Accepted passes every 2xx to the TU, which ACKs them."""
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    transaction = layer.send_request(invite, UAS, 0.0)
    layer.take_outgoing()
    ok = respond_to(invite, 200)
    for now in (0.1, 0.6, 1.6):
        layer.receive_response(ok, UAS, now)
    assert layer.take_outgoing() == []
    assert drain(layer) == [ResponseReceived(transaction=transaction, response=ok)] * 3
    assert transaction.state is S.ACCEPTED
    fork = respond_to(invite, 200, to_tag="other-fork")
    layer.receive_response(fork, UAS, 2.0)
    assert drain(layer) == [ResponseReceived(transaction=transaction, response=fork)]
    # The TU's ACK for the 2xx goes out statelessly, with a branch of its own.
    ack = make_ack(invite, branch=new_branch())
    layer.send_stateless(ack, UAS)
    assert [o.data for o in layer.take_outgoing()] == [ack.to_bytes()]


def test_2xx_after_timer_m_is_a_stray_for_the_core() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    layer.send_request(invite, UAS, 0.0)
    ok = respond_to(invite, 200)
    layer.receive_response(ok, UAS, 0.1)
    layer.handle_timer(32.1)
    drain(layer)
    layer.receive_response(ok, UAS, 33.0)
    assert drain(layer) == [StrayResponseReceived(response=ok, source=UAS)]


def test_cancel_in_proceeding_goes_out_at_once() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request(routes=["<sip:p1.example.org;lr>"])
    transaction = layer.send_request(invite, UAS, 0.0)
    assert isinstance(transaction, ClientInviteTransaction)
    layer.receive_response(respond_to(invite, 180), UAS, 0.1)
    layer.take_outgoing()
    drain(layer)
    layer.cancel(transaction, 1.0)
    (out,) = layer.take_outgoing()
    cancel = parse_message(out.data)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert out.destination == UAS
    assert cancel.uri == invite.uri
    assert [v.branch for v in cancel.vias] == [invite.top_via.branch]
    for name in ("from", "to", "call-id"):
        assert cancel.headers.get(name) == invite.headers.get(name)
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.headers.get_all("route") == invite.headers.get_all("route")
    cancel_transaction = transaction.cancel_transaction
    assert isinstance(cancel_transaction, ClientNonInviteTransaction)
    assert cancel_transaction.timers == {Timer.E: 1.5, Timer.F: 33.0}
    # Responses go to the right one of the two transactions sharing the branch.
    layer.receive_response(respond_to(cancel, 200), UAS, 1.1)
    layer.receive_response(respond_to(invite, 487), UAS, 1.2)
    events = drain(layer)
    assert [(type(e), getattr(e, "transaction", None)) for e in events] == [
        (ResponseReceived, cancel_transaction), (ResponseReceived, transaction)]
    assert [label(m) for m in sent(layer)] == ["ACK"]
    layer.cancel(transaction, 1.3)  # too late: nothing happens
    assert layer.take_outgoing() == []


def test_cancel_in_calling_waits_for_a_provisional_response() -> None:
    """RFC 3261 §9.1: no CANCEL before a 1xx."""
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    transaction = layer.send_request(invite, UAS, 0.0)
    assert isinstance(transaction, ClientInviteTransaction)
    layer.take_outgoing()
    layer.cancel(transaction, 0.1)
    assert transaction.cancel_requested
    assert layer.take_outgoing() == []
    layer.receive_response(respond_to(invite, 100, to_tag=None), UAS, 0.2)
    assert [label(m) for m in sent(layer)] == ["CANCEL"]
    layer.cancel(transaction, 0.3)  # asking twice sends one CANCEL
    assert layer.take_outgoing() == []


def test_cancel_requested_in_calling_is_dropped_if_a_final_response_comes_first() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    transaction = layer.send_request(invite, UAS, 0.0)
    assert isinstance(transaction, ClientInviteTransaction)
    layer.take_outgoing()
    layer.cancel(transaction, 0.1)
    layer.receive_response(respond_to(invite, 486), UAS, 0.2)
    layer.receive_response(respond_to(invite, 486), UAS, 0.3)
    assert [label(m) for m in sent(layer)] == ["ACK", "ACK"]
    assert transaction.cancel_transaction is None


# ------------------------------------------------------------------ matching


def server_layer() -> TransactionLayer[str]:
    return TransactionLayer()


def received(layer: TransactionLayer[str]) -> list[ServerTransaction[str]]:
    return [e.transaction for e in drain(layer) if isinstance(e, RequestReceived)]


def test_retransmitted_request_is_absorbed_and_answered_with_the_last_response() -> None:
    layer = server_layer()
    invite = make_request()
    layer.receive_request(invite, UAC, 0.0)
    (transaction,) = received(layer)
    layer.receive_request(invite, UAC, 0.1)
    assert drain(layer) == [] and layer.take_outgoing() == []
    layer.respond(transaction, respond_to(invite, 180), 0.15)
    layer.take_outgoing()
    layer.receive_request(invite, UAC, 0.5)
    assert [label(m) for m in sent(layer)] == ["180"]
    assert drain(layer) == []
    assert len(layer) == 1


def test_new_request_event_carries_transaction_request_and_source() -> None:
    layer = server_layer()
    request = make_request("OPTIONS")
    layer.receive_request(request, UAC, 0.0)
    (event,) = drain(layer)
    assert isinstance(event, RequestReceived)
    assert isinstance(event.transaction, ServerNonInviteTransaction)
    assert (event.request, event.source) == (request, UAC)
    assert event.transaction.request is request and event.transaction.peer == UAC
    assert event.transaction.method == "OPTIONS" and event.transaction.branch == BRANCH


def test_responses_go_back_to_the_source_of_the_request() -> None:
    layer = server_layer()
    request = make_request("OPTIONS")
    layer.receive_request(request, "where-it-came-from", 0.0)
    (transaction,) = received(layer)
    layer.respond(transaction, respond_to(request, 200), 0.0)
    (out,) = layer.take_outgoing()
    assert out.destination == "where-it-came-from" and out.transaction is transaction


def test_sent_by_mismatch_is_a_different_transaction() -> None:
    layer = server_layer()
    layer.receive_request(make_request(sent_by="10.0.0.1:5060"), UAC, 0.0)
    layer.receive_request(make_request(sent_by="10.0.0.9:5060"), UAC, 0.0)
    layer.receive_request(make_request(sent_by="10.0.0.1:5062"), UAC, 0.0)
    assert len(received(layer)) == 3
    assert len(layer) == 3


def test_same_branch_different_method_is_a_different_transaction() -> None:
    layer = server_layer()
    layer.receive_request(make_request("INVITE"), UAC, 0.0)
    layer.receive_request(make_request("BYE"), UAC, 0.0)
    assert [t.method for t in received(layer)] == ["INVITE", "BYE"]


def test_cancel_is_its_own_transaction_and_finds_the_invite() -> None:
    layer = server_layer()
    invite = make_request()
    layer.receive_request(invite, UAC, 0.0)
    (invite_transaction,) = received(layer)
    cancel = make_request("CANCEL")  # same branch, sent-by, Call-ID, CSeq number
    layer.receive_request(cancel, UAC, 1.0)
    (cancel_transaction,) = received(layer)
    assert isinstance(cancel_transaction, ServerNonInviteTransaction)
    assert cancel_transaction is not invite_transaction
    assert invite_transaction.state is S.PROCEEDING  # the CANCEL did not touch it
    assert layer.find_server_invite_for_cancel(cancel) is invite_transaction
    assert layer.find_server_invite_for_cancel(make_request("CANCEL", branch="z9hG4bK-x")) is None
    assert layer.find_server_invite_for_cancel(
        make_request("CANCEL", sent_by="10.9.9.9:5060")) is None


def test_ack_for_a_non_2xx_is_absorbed_into_confirmed() -> None:
    layer = server_layer()
    invite = make_request()
    layer.receive_request(invite, UAC, 0.0)
    (transaction,) = received(layer)
    layer.respond(transaction, respond_to(invite, 486), 0.1)
    layer.take_outgoing()
    layer.receive_request(make_ack(invite), UAC, 0.2)
    assert transaction.state is S.CONFIRMED
    assert drain(layer) == [] and layer.take_outgoing() == []
    layer.receive_request(make_ack(invite), UAC, 0.3)  # a retransmitted ACK, absorbed too
    assert drain(layer) == [] and layer.take_outgoing() == []
    assert transaction.timers == {Timer.I: 5.2}


def test_ack_for_a_2xx_with_its_own_branch_goes_to_the_core() -> None:
    layer = server_layer()
    invite = make_request()
    layer.receive_request(invite, UAC, 0.0)
    (transaction,) = received(layer)
    assert isinstance(transaction, ServerInviteTransaction)
    layer.respond(transaction, respond_to(invite, 200), 0.1)
    ack = make_ack(invite, branch="z9hG4bK-ack-for-2xx")
    layer.receive_request(ack, UAC, 0.2)
    assert drain(layer) == [AckReceived(request=ack, source=UAC, transaction=None)]
    same_branch_ack = make_ack(invite)
    layer.receive_request(same_branch_ack, UAC, 0.3)
    assert drain(layer) == [
        AckReceived(request=same_branch_ack, source=UAC, transaction=transaction)]
    assert len(layer) == 1  # an ACK never creates a transaction


def test_client_matching_uses_branch_and_cseq_method() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    layer.send_request(invite, UAS, 0.0)
    foreign = respond_to(make_request(branch="z9hG4bK-someone-else"), 200)
    layer.receive_response(foreign, UAS, 0.1)
    wrong_method = respond_to(make_request("CANCEL"), 200)  # no CANCEL was sent
    layer.receive_response(wrong_method, UAS, 0.1)
    assert drain(layer) == [StrayResponseReceived(response=foreign, source=UAS),
                            StrayResponseReceived(response=wrong_method, source=UAS)]


def test_send_request_refuses_what_is_not_a_new_transaction() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    layer.send_request(make_request(), UAS, 0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_request(make_request(), UAS, 0.0)  # branch in use
    with pytest.raises(LocalProtocolError):
        layer.send_request(make_request("ACK", branch="z9hG4bK-ack"), UAS, 0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_request(make_request(branch="no-cookie"), UAS, 0.0)
    with pytest.raises(LocalProtocolError):
        layer.send_request(make_request(branch=None), UAS, 0.0)
    assert len(layer) == 1


def test_new_branch_is_an_rfc3261_branch_and_unique() -> None:
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith("z9hG4bK") and len(b) > 7 for b in branches)


# RFC 2543 (§17.2.3): no magic cookie, match on URI, tags, Call-ID, CSeq, top Via.


@pytest.mark.parametrize("branch", [None, "1234abcd"])
def test_rfc2543_retransmission_ack_and_cancel(branch: str | None) -> None:
    layer = server_layer()
    invite = make_request(branch=branch)
    layer.receive_request(invite, UAC, 0.0)
    (transaction,) = received(layer)
    layer.receive_request(invite, UAC, 0.1)
    assert drain(layer) == []  # a retransmission
    cancel = make_request("CANCEL", branch=branch)
    assert layer.find_server_invite_for_cancel(cancel) is transaction
    layer.respond(transaction, respond_to(invite, 486, to_tag="ours"), 0.2)
    layer.take_outgoing()
    wrong_tag_ack = make_request("ACK", branch=branch, to_tag="not-ours")
    layer.receive_request(wrong_tag_ack, UAC, 0.3)
    assert drain(layer) == [AckReceived(request=wrong_tag_ack, source=UAC)]
    states = [transaction.state]
    layer.receive_request(make_request("ACK", branch=branch, to_tag="ours"), UAC, 0.4)
    assert drain(layer) == []
    states.append(transaction.state)
    assert states == [S.COMPLETED, S.CONFIRMED]


@pytest.mark.parametrize(
    "change",
    [{"call_id": "other-call"}, {"from_tag": "other"}, {"cseq": 2},
     {"uri": "sip:carol@example.org"}, {"sent_by": "10.0.0.7:5060"}, {"to_tag": "x"}],
)
def test_rfc2543_any_difference_is_a_new_transaction(change: dict[str, object]) -> None:
    layer = server_layer()
    layer.receive_request(make_request("OPTIONS", branch=None), UAC, 0.0)
    layer.receive_request(make_request("OPTIONS", branch=None, **change), UAC, 0.0)  # type: ignore[arg-type]
    assert len(received(layer)) == 2


def test_rfc2543_ack_for_a_reinvite_matches_on_the_dialog_tag() -> None:
    layer = server_layer()
    reinvite = make_request(branch=None, to_tag="dialog", cseq=5)
    layer.receive_request(reinvite, UAC, 0.0)
    (transaction,) = received(layer)
    layer.respond(transaction, respond_to(reinvite, 488), 0.1)
    layer.receive_request(make_request("ACK", branch=None, to_tag="dialog", cseq=5), UAC, 0.2)
    assert transaction.state is S.CONFIRMED


# ------------------------------------------------------------------ bounds


def test_full_table_answers_503_statelessly_and_stays_at_the_bound() -> None:
    layer: TransactionLayer[str] = TransactionLayer(max_transactions=10)
    requests = [make_request("OPTIONS", branch=f"z9hG4bK-{n}") for n in range(12)]
    for request in requests[:10]:
        layer.receive_request(request, UAC, 0.0)
    transactions = received(layer)
    assert len(transactions) == len(layer) == 10

    layer.receive_request(requests[10], UAC, 0.1)
    assert len(layer) == 10
    (rejected,) = drain(layer)
    assert rejected == RequestRejected(request=requests[10], source=UAC, status=503,
                                       reason="Service Unavailable")
    (out,) = layer.take_outgoing()
    assert out.destination == UAC and out.transaction is None
    answer = parse_message(out.data)
    assert isinstance(answer, Response) and answer.status == 503
    assert answer.top_via.branch == "z9hG4bK-10" and answer.to_addr.tag
    layer.receive_request(requests[10], UAC, 0.2)  # a retransmission: the same To tag
    assert parse_message(layer.take_outgoing()[0].data).to_addr.tag == answer.to_addr.tag
    drain(layer)

    layer.receive_request(requests[0], UAC, 0.3)  # retransmissions still absorbed
    layer.receive_request(make_ack(requests[0], branch="z9hG4bK-ack"), UAC, 0.3)
    assert [type(e) for e in drain(layer)] == [AckReceived]
    assert layer.take_outgoing() == []
    with pytest.raises(TableFullError):
        layer.send_request(requests[11], UAS, 0.3)

    for transaction in transactions:
        layer.respond(transaction, respond_to(transaction.request, 200), 1.0)
    # Answered: out of the table at once, tombstones absorb retransmissions for Timer J.
    assert [type(e) for e in drain(layer)] == [TransactionTerminated] * 10
    assert len(layer) == 0 and layer.tombstones == 10
    layer.take_outgoing()
    layer.receive_request(requests[11], UAC, 2.0)  # room again
    assert len(received(layer)) == 1
    layer.handle_timer(1.0 + 32.0)
    assert layer.tombstones == 0


def test_terminated_transactions_are_not_kept_alive_by_cancelled_timers() -> None:
    """Lazy deletion must not turn the timer heap into a leak under a flood."""
    layer: TransactionLayer[str] = TransactionLayer()
    refs: list[int] = []
    for n in range(5000):
        request = make_request("OPTIONS", branch=f"z9hG4bK-flood-{n}", transport="TCP")
        layer.receive_request(request, UAC, 0.0)
        (transaction,) = received(layer)
        layer.respond(transaction, respond_to(request, 200), 0.0)  # J = 0: gone at once
        client = layer.send_request(
            make_request("OPTIONS", branch=f"z9hG4bK-out-{n}", transport="TCP"), UAS, 0.0)
        layer.receive_response(respond_to(client.request, 200), UAS, 0.0)  # F cancelled
        kind = type(client)
        refs.append(id(client))
        drain(layer)
        layer.take_outgoing()
        del transaction, client
    gc.collect()
    assert len(layer) == 0
    assert layer.next_deadline() is None
    assert still_alive(refs, kind) < 2500


# ------------------------------------------------------------------ layering


def test_importing_pbx_sip_does_not_import_the_reactor() -> None:
    code = ("import sys, pbx.sip, pbx.sip.transaction, pbx.sip.events, pbx.sip.timers; "
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'; "
            "assert not any(m.startswith('twisted.internet') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
