"""The calls' timers share one reactor timer (`pbx.core.calls.CallTimers`), on a test clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from pbx.core.calls import CallTimers


def make() -> tuple[Clock, CallTimers, list[str]]:
    clock = Clock()
    clock.advance(1_000)
    ran: list[str] = []
    timers = CallTimers(clock, after=lambda: ran.append("pump"))
    return clock, timers, ran


def test_timers_run_at_their_time_in_order_and_the_pump_after_them() -> None:
    clock, timers, ran = make()
    timers.call_later(1.5, lambda: ran.append("b"))
    timers.call_later(0.5, lambda: ran.append("a"))
    timers.call_later(1.5, lambda: ran.append("c"))
    assert len(clock.getDelayedCalls()) == 1  # one reactor timer for all of them

    clock.advance(0.49)
    assert ran == []
    clock.advance(0.01)
    assert ran == ["a", "pump"]
    clock.advance(1.0)
    assert sorted(ran[2:4]) == ["b", "c"] and ran[4:] == ["pump"]
    assert len(timers) == 0 and clock.getDelayedCalls() == []


def test_a_cancelled_timer_does_not_run_and_the_last_cancel_frees_the_reactor() -> None:
    clock, timers, ran = make()
    first = timers.call_later(1, lambda: ran.append("first"))
    second = timers.call_later(2, lambda: ran.append("second"))
    first.cancel()
    assert not first.active() and second.active()
    clock.advance(1.5)
    assert ran == []
    second.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert ran == []


def test_a_sooner_timer_moves_the_reactor_timer_forward() -> None:
    clock, timers, ran = make()
    timers.call_later(900, lambda: ran.append("refresh"))
    timers.call_later(0.5, lambda: ran.append("retransmit"))
    clock.advance(0.5)
    assert ran == ["retransmit", "pump"]
    (wakeup,) = clock.getDelayedCalls()
    assert wakeup.getTime() == 1_900


def test_work_may_set_timers_and_a_failing_one_does_not_stop_the_others() -> None:
    clock, timers, ran = make()

    def again() -> None:
        ran.append("again")
        timers.call_later(0, lambda: ran.append("now"))
        timers.call_later(1, lambda: ran.append("later"))

    def fails() -> None:
        raise RuntimeError("a bug in one call")

    timers.call_later(1, fails)
    timers.call_later(1, again)
    clock.advance(1)
    assert ran == ["again", "now", "pump"]
    clock.advance(1)
    assert ran[-2:] == ["later", "pump"]
    assert len(timers) == 0


def test_cancelled_entries_are_swept_once_they_are_most_of_the_heap() -> None:
    clock, timers, ran = make()
    kept = [timers.call_later(100 + n, lambda n=n: ran.append(f"kept{n}")) for n in range(10)]
    gone = [timers.call_later(50, lambda: ran.append("gone")) for _ in range(200)]
    for timer in gone:
        timer.cancel()
    assert len(timers) == 10
    assert len(timers._heap) < 100  # swept, not kept until their time
    clock.advance(200)
    assert [r for r in ran if r != "pump"] == [f"kept{n}" for n in range(10)]
    assert all(not timer.active() for timer in kept)
