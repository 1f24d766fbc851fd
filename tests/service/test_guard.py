"""Password guessing: slowed down, then refused, and every event in the security log.

These run on the real reactor, where a reply can be late for reasons of the
machine's own: they check only what cannot be (a slowed answer arriving
before its slowdown). Which answers come at once and which exactly
slowdown_s late is checked on an injected clock in
tests/unit/test_guard_timing.py.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.service.sipclient import Phone, Reply

GUARD = {"security": {"slowdown_after": 2, "slowdown_s": 0.3, "max_auth_failures": 4,
                      "failure_window_s": 60, "cooldown_s": 60}}
SLOWDOWN_S = 0.3


async def timed(phone: Phone, **kwargs: Any) -> tuple[Reply, float]:
    """Send a REGISTER; the final response and how long it took to come."""
    reactor = phone.link.reactor
    sent = reactor.seconds()
    reply = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"], **kwargs)
    return reply, reactor.seconds() - sent


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_are_slowed_down_then_refused(pbx_factory: Any) -> None:
    pbx = await pbx_factory(GUARD)
    phone = await pbx.phone("1001")
    challenge, _ = await timed(phone)
    assert challenge.status == 401

    first, _ = await timed(phone, authorization=phone.answer(challenge, password="guess1"))
    assert first.status == 401

    # From the second failure on, each challenge is answered late.
    second, took = await timed(phone, authorization=phone.answer(first, password="guess2"))
    assert second.status == 401
    assert took >= SLOWDOWN_S - 0.001
    third, took = await timed(phone, authorization=phone.answer(second, password="guess3"))
    assert third.status == 401
    assert took >= SLOWDOWN_S - 0.001

    # The fourth failure reaches max_auth_failures: the address is blocked
    # at once, with no fresh challenge to guess against.
    fourth, _ = await timed(phone, authorization=phone.answer(third, password="guess4"))
    assert fourth.status == 403
    assert "www-authenticate" not in fourth

    # Even the right password is now refused, at once, for the cool-down.
    blocked, _ = await timed(phone, authorization=phone.answer(third))
    assert blocked.status == 403
    assert "www-authenticate" not in blocked
    await pbx.rows_when(lambda rows: rows == [], "1001", timeout=0.5)

    # A phone at another address is not affected.
    elsewhere = await pbx.phone("1001", local_host="127.0.0.2")
    assert (await elsewhere.register()).status == 200

    lines = pbx.security_log.read_text().splitlines()
    # One line per failure and one for the block; requests refused during the
    # cool-down are not logged one by one (a flood must not fill the disk).
    assert len(lines) == 4, lines
    assert all(" from 127.0.0.1 " in line and "user=1001" in line for line in lines)
    assert [line.split(" pbx security ")[1].split()[0] for line in lines] == [
        "auth-failure", "auth-failure", "auth-failure", "blocked"]
    assert all("guess" not in line for line in lines)  # no password in the log


@pytest_twisted.ensureDeferred
async def test_unknown_user_guessing_is_logged_with_the_name_tried(pbx_factory: Any) -> None:
    pbx = await pbx_factory(GUARD)
    link = await pbx.link("tcp")
    guesser = Phone(link, "admin", "admin")

    challenge = await guesser.request("REGISTER", contacts=["<sip:admin@127.0.0.1>"])
    failed = await guesser.request("REGISTER", contacts=["<sip:admin@127.0.0.1>"],
                                   authorization=guesser.answer(challenge))

    assert failed.status == 401
    lines = pbx.security_log.read_text().splitlines()
    assert len(lines) == 1
    assert "auth-failure from 127.0.0.1 user=admin" in lines[0]


@pytest_twisted.ensureDeferred
async def test_success_clears_the_count(pbx_factory: Any) -> None:
    pbx = await pbx_factory(GUARD)
    phone = await pbx.phone("1002")
    challenge, _ = await timed(phone)
    typo, _ = await timed(phone, authorization=phone.answer(challenge, password="typo"))
    assert typo.status == 401
    assert (await timed(phone, authorization=phone.answer(typo)))[0].status == 200

    # Three more failures, the most that max_auth_failures (4) allows without a
    # block: had the first one still counted, the third would be refused.
    reply, _ = await timed(phone)
    for guess in ("typo2", "typo3", "typo4"):
        reply, _ = await timed(phone, authorization=phone.answer(reply, password=guess))
        assert reply.status == 401, guess
    assert "blocked" not in pbx.security_log.read_text()


@pytest_twisted.ensureDeferred
async def test_stopping_with_a_slowed_answer_pending_leaves_nothing_behind(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory(GUARD)
    phone = await pbx.phone("1001")
    challenge, _ = await timed(phone)
    first, _ = await timed(phone, authorization=phone.answer(challenge, password="x"))
    phone.link.send(phone.build("REGISTER", contacts=[f"<{phone.contact_uri}>"],
                                authorization=phone.answer(first, password="y")))
    await phone.link.silence(0.1)  # the slowed 401 is pending

    await pbx.service.stopService()
    pbx.running = False

    # The fixture checks that no delayed call is left; nothing comes after the stop.
    await phone.link.silence(SLOWDOWN_S + 0.1)
