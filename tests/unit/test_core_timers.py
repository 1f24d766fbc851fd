"""The core's timers share one reactor timer, and the flush runs once after them
(`pbx.core.timers.Timers`), on a test clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from pbx.core.timers import Timers


def make() -> tuple[Clock, Timers, list[str]]:
    clock = Clock()
    clock.advance(1_000)
    ran: list[str] = []
    timers = Timers(clock, after=lambda: ran.append("flush"))
    return clock, timers, ran


def test_timers_run_at_their_time_in_order_and_the_flush_after_them() -> None:
    clock, timers, ran = make()
    timers.call_later(1.5, lambda: ran.append("b"))
    timers.call_later(0.5, lambda: ran.append("a"))
    timers.call_later(1.5, lambda: ran.append("c"))
    assert len(clock.getDelayedCalls()) == 1  # one reactor timer for all of them

    clock.advance(0.49)
    assert ran == []
    clock.advance(0.01)
    assert ran == ["a", "flush"]
    clock.advance(1.0)
    assert sorted(ran[2:4]) == ["b", "c"] and ran[4:] == ["flush"]
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
    assert ran == ["retransmit", "flush"]
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
    assert ran == ["again", "now", "flush"]
    clock.advance(1)
    assert ran[-2:] == ["later", "flush"]
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
    assert [r for r in ran if r != "flush"] == [f"kept{n}" for n in range(10)]
    assert all(not timer.active() for timer in kept)


def test_flush_soon_coalesces_into_one_flush_on_the_next_turn() -> None:
    clock, timers, ran = make()
    timers.flush_soon()
    timers.flush_soon()
    timers.flush_soon()
    assert ran == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert ran == ["flush"] and clock.getDelayedCalls() == []


def test_a_flush_that_ran_meanwhile_takes_the_place_of_the_one_asked_for() -> None:
    clock, timers, ran = make()
    timers.flush_soon()
    timers.flushed()  # an event's flush sent everything
    clock.advance(0)
    assert ran == [] and clock.getDelayedCalls() == []


def test_work_of_timers_due_together_is_flushed_once() -> None:
    """Each work item asks for a flush, as a call's sending does; one flush runs."""
    clock = Clock()
    ran: list[str] = []
    timers = Timers(clock)

    def flush() -> None:  # what the endpoint's flush does, as the timers see it
        ran.append("flush")
        timers.flushed()

    timers.after = flush

    def sends() -> None:
        ran.append("send")
        timers.flush_soon()

    timers.call_later(1, sends)
    timers.call_later(1, sends)
    clock.advance(1)
    assert ran == ["send", "send", "flush"]
    assert clock.getDelayedCalls() == []
