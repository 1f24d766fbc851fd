"""Transaction timers with exact deadlines (RFC 3261 §17 Table 4, RFC 6026) [aioquic].

``now`` is set by hand; each test names the deadline it expects to the
millisecond, so a timer that doubles once too often or forgets its cap fails.
"""

from __future__ import annotations

import pytest

from pbx.sip.events import (
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimedOut,
)
from pbx.sip.message import Response
from pbx.sip.transaction import Timer, TimerSettings, TransactionLayer
from tests.unit.transaction_helpers import (
    UAC,
    UAS,
    S,
    drain,
    label,
    make_ack,
    make_request,
    respond_to,
    run_timers,
    sent,
)

# ------------------------------------------------------------------ timers


def test_timer_a_doubles_without_cap_until_timer_b() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    transaction = layer.send_request(make_request(), UAS, 0.0)
    assert [label(m) for m in sent(layer)] == ["INVITE"]
    assert transaction.timers == {Timer.A: 0.5, Timer.B: 32.0}
    assert layer.next_deadline() == 0.5
    fired = run_timers(layer, until=100.0)
    # T1, 3*T1, 7*T1, 15*T1, 31*T1, 63*T1 (intervals 1, 2, 4, 8, 16, 32 T1), then B at 64*T1.
    assert fired == [(0.5, ["INVITE"]), (1.5, ["INVITE"]), (3.5, ["INVITE"]),
                     (7.5, ["INVITE"]), (15.5, ["INVITE"]), (31.5, ["INVITE"]), (32.0, [])]
    events = drain(layer)
    assert events == [TransactionTimedOut(transaction=transaction, timer=Timer.B),
                      TransactionTerminated(transaction=transaction)]
    assert transaction.state is S.TERMINATED
    assert layer.next_deadline() is None
    assert len(layer) == 0


def test_timer_a_follows_t1_and_a_late_clock() -> None:
    layer: TransactionLayer[str] = TransactionLayer(TimerSettings(t1_s=1.0, t2_s=4.0))
    layer.send_request(make_request(), UAS, 1000.0)
    layer.take_outgoing()
    assert [t for t, _ in run_timers(layer, until=2000.0)] == [
        1001.0, 1003.0, 1007.0, 1015.0, 1031.0, 1063.0, 1064.0]


def test_timer_a_restarts_from_when_it_actually_fired() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    transaction = layer.send_request(make_request(), UAS, 0.0)
    layer.take_outgoing()
    layer.handle_timer(0.7)  # the shell woke 200 ms late
    assert len(layer.take_outgoing()) == 1
    assert transaction.timers[Timer.A] == 0.7 + 1.0


def test_timer_e_doubles_up_to_t2_then_timer_f() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    transaction = layer.send_request(make_request("OPTIONS"), UAS, 0.0)
    layer.take_outgoing()
    assert transaction.timers == {Timer.E: 0.5, Timer.F: 32.0}
    fired = run_timers(layer, until=100.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5,
                                     31.5, 32.0]
    assert all(labels == ["OPTIONS"] for _, labels in fired[:-1])
    assert drain(layer) == [TransactionTimedOut(transaction=transaction, timer=Timer.F),
                            TransactionTerminated(transaction=transaction)]


def test_timer_e_fires_every_t2_in_proceeding() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS")
    transaction = layer.send_request(request, UAS, 0.0)
    layer.take_outgoing()
    layer.handle_timer(0.5)  # E: 0.5 -> next at 1.5
    layer.receive_response(respond_to(request, 100), UAS, 0.6)
    assert transaction.state is S.PROCEEDING
    assert transaction.timers == {Timer.E: 1.5, Timer.F: 32.0}  # both keep running
    layer.take_outgoing()
    fired = run_timers(layer, until=100.0)
    assert [t for t, _ in fired] == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5, 32.0]


def test_timer_g_doubles_up_to_t2_then_timer_h() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    layer.receive_request(invite, UAC, 0.0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    transaction = event.transaction
    layer.respond(transaction, respond_to(invite, 486), 0.0)
    assert [label(m) for m in sent(layer)] == ["486"]
    assert transaction.timers == {Timer.G: 0.5, Timer.H: 32.0}
    fired = run_timers(layer, until=100.0)
    assert [t for t, _ in fired] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5,
                                     31.5, 32.0]
    assert all(labels == ["486"] for _, labels in fired[:-1])
    assert drain(layer) == [TransactionTimedOut(transaction=transaction, timer=Timer.H),
                            TransactionTerminated(transaction=transaction)]


@pytest.mark.parametrize(
    ("steps", "timer", "duration"),
    [
        ([486], Timer.D, 32.0),  # client INVITE Completed, "at least 32 s"
        ([200], Timer.M, 32.0),  # client INVITE Accepted, 64*T1
    ],
)
def test_client_invite_wait_timers(steps: list[int], timer: Timer, duration: float) -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    transaction = layer.send_request(invite, UAS, 0.0)
    for status in steps:
        layer.receive_response(respond_to(invite, status), UAS, 2.0)
    assert transaction.timers == {timer: 2.0 + duration}
    assert layer.next_deadline() == 2.0 + duration


def test_wait_timers_of_the_other_machines_over_udp() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    options = make_request("OPTIONS", branch="z9hG4bK-k")
    client = layer.send_request(options, UAS, 0.0)
    layer.receive_response(respond_to(options, 200), UAS, 1.0)
    assert client.timers == {Timer.K: 1.0 + 5.0}  # T4

    invite = make_request(branch="z9hG4bK-i")
    layer.receive_request(invite, UAC, 0.0)
    server_invite = next(e.transaction for e in drain(layer) if isinstance(e, RequestReceived))
    layer.respond(server_invite, respond_to(invite, 486), 1.0)
    layer.receive_request(make_ack(invite), UAC, 2.0)
    assert server_invite.timers == {Timer.I: 2.0 + 5.0}  # T4

    accepted = make_request(branch="z9hG4bK-l")
    layer.receive_request(accepted, UAC, 0.0)
    server_accepted = next(e.transaction for e in drain(layer) if isinstance(e, RequestReceived))
    layer.respond(server_accepted, respond_to(accepted, 200), 1.0)
    assert server_accepted.timers == {Timer.L: 1.0 + 32.0}  # 64*T1

    bye = make_request("BYE", branch="z9hG4bK-j")
    layer.receive_request(bye, UAC, 0.0)
    server_bye = next(e.transaction for e in drain(layer) if isinstance(e, RequestReceived))
    assert server_bye.timers == {}
    layer.respond(server_bye, respond_to(bye, 200), 1.0)
    # Completed is a tombstone in the layer: Timer J is its expiry, not the object's.
    assert server_bye.timers == {}
    assert layer.tombstones == 1
    layer.handle_timer(1.0 + 32.0 - 0.001)
    assert layer.tombstones == 1
    layer.handle_timer(1.0 + 32.0)  # 64*T1
    assert layer.tombstones == 0

    whole: TransactionLayer[str] = TransactionLayer(max_tombstones=0)  # as drawn
    whole.receive_request(bye, UAC, 0.0)
    server_bye = next(e.transaction for e in drain(whole) if isinstance(e, RequestReceived))
    whole.respond(server_bye, respond_to(bye, 200), 1.0)
    assert server_bye.timers == {Timer.J: 1.0 + 32.0}  # 64*T1


def test_reliable_client_invite_never_retransmits_and_has_no_timer_d() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request(transport="TCP")
    transaction = layer.send_request(invite, UAS, 0.0)
    assert transaction.reliable
    assert transaction.timers == {Timer.B: 32.0}  # no Timer A over TCP
    layer.take_outgoing()
    assert run_timers(layer, until=31.9) == []
    layer.receive_response(respond_to(invite, 486), UAS, 1.0)
    assert [label(m) for m in sent(layer)] == ["ACK"]
    assert transaction.state is S.TERMINATED  # Timer D is zero
    assert [type(e) for e in drain(layer)] == [ResponseReceived, TransactionTerminated]
    assert layer.next_deadline() is None


def test_reliable_client_non_invite_has_no_timer_e_and_no_timer_k() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("OPTIONS", transport="TLS")
    transaction = layer.send_request(request, UAS, 0.0)
    assert transaction.timers == {Timer.F: 32.0}
    layer.receive_response(respond_to(request, 200), UAS, 1.0)
    assert transaction.state is S.TERMINATED
    assert layer.next_deadline() is None


def test_reliable_flag_overrides_the_via() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    transaction = layer.send_request(make_request("OPTIONS"), UAS, 0.0, reliable=True)
    assert transaction.timers == {Timer.F: 32.0}


def test_reliable_server_invite_has_no_timer_g_and_no_timer_i() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request(transport="TCP")
    layer.receive_request(invite, UAC, 0.0)
    transaction = next(e.transaction for e in drain(layer) if isinstance(e, RequestReceived))
    layer.respond(transaction, respond_to(invite, 486), 0.0)
    assert transaction.timers == {Timer.H: 32.0}  # H still guards against a lost ACK
    layer.take_outgoing()
    layer.receive_request(make_ack(invite), UAC, 1.0)
    assert transaction.state is S.TERMINATED  # Confirmed lasts Timer I = 0
    assert layer.take_outgoing() == []
    assert layer.next_deadline() is None


def test_reliable_server_non_invite_terminates_with_its_final_response() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    request = make_request("REGISTER", transport="TCP")
    layer.receive_request(request, UAC, 0.0)
    transaction = next(e.transaction for e in drain(layer) if isinstance(e, RequestReceived))
    layer.respond(transaction, respond_to(request, 200), 0.0)
    assert [label(m) for m in sent(layer)] == ["200"]
    assert transaction.state is S.TERMINATED  # Timer J = 0
    assert drain(layer) == [TransactionTerminated(transaction=transaction)]
    assert len(layer) == 0


def test_server_invite_sends_100_trying_after_200_ms_of_silence() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    layer.receive_request(invite, UAC, 10.0)
    assert layer.next_deadline() == pytest.approx(10.2)
    layer.handle_timer(10.19)
    assert layer.take_outgoing() == []
    layer.handle_timer(10.2)
    (trying,) = sent(layer)
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to_addr.tag is None  # §8.2.6.1
    layer.receive_request(invite, UAC, 10.3)  # a retransmission gets the 100 again
    assert [label(m) for m in sent(layer)] == ["100"]


def test_server_invite_sends_no_100_when_the_tu_answered_in_time() -> None:
    layer: TransactionLayer[str] = TransactionLayer()
    invite = make_request()
    layer.receive_request(invite, UAC, 0.0)
    transaction = next(e.transaction for e in drain(layer) if isinstance(e, RequestReceived))
    layer.respond(transaction, respond_to(invite, 180), 0.1)
    assert transaction.timers == {}
    assert layer.next_deadline() is None
    layer.handle_timer(1.0)
    assert [label(m) for m in sent(layer)] == ["180"]


@pytest.mark.parametrize(("after", "expected"), [(None, []), (0.0, ["100"])])
def test_send_trying_after_setting(after: float | None, expected: list[str]) -> None:
    layer: TransactionLayer[str] = TransactionLayer(TimerSettings(send_trying_after_s=after))
    layer.receive_request(make_request(), UAC, 0.0)
    assert [label(m) for m in sent(layer)] == expected
    assert layer.next_deadline() is None


def test_timer_settings_derive_every_duration() -> None:
    settings = TimerSettings(t1_s=0.25, t2_s=2.0, t4_s=3.0)
    udp = {t: settings.duration_s(t, reliable=False) for t in Timer}
    tcp = {t: settings.duration_s(t, reliable=True) for t in Timer}
    assert udp == {Timer.A: 0.25, Timer.B: 16.0, Timer.D: 32.0, Timer.E: 0.25,
                   Timer.F: 16.0, Timer.G: 0.25, Timer.H: 16.0, Timer.I: 3.0, Timer.J: 16.0,
                   Timer.K: 3.0, Timer.L: 16.0, Timer.M: 16.0, Timer.TRYING: 0.2}
    assert tcp == {Timer.A: None, Timer.B: 16.0, Timer.D: 0.0, Timer.E: None,
                   Timer.F: 16.0, Timer.G: None, Timer.H: 16.0, Timer.I: 0.0, Timer.J: 0.0,
                   Timer.K: 0.0, Timer.L: 16.0, Timer.M: 16.0, Timer.TRYING: 0.2}
    assert TimerSettings().timeout_s == 32.0


@pytest.mark.parametrize("kwargs", [{"t1_s": 0.0}, {"t2_s": 0.1}, {"t4_s": -1.0},
                                    {"timer_d_s": -1.0}, {"send_trying_after_s": -0.1}])
def test_timer_settings_refuse_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimerSettings(**kwargs)

