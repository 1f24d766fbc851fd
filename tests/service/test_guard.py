"""Password guessing: slowed down, then refused, and every event in the security log.

These run on the real reactor, where a reply can be late for reasons of the
machine's own: they check only what cannot be (a slowed answer arriving
before its slowdown). Which answers come at once and which exactly
slowdown_s late is checked on an injected clock in
tests/unit/test_guard_timing.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.service.conftest import PASSWORDS
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
        "wrong-password", "wrong-password", "wrong-password", "blocked"]
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
    assert "unknown-user from 127.0.0.1 user=admin" in lines[0]


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


# ------------------------------------------ what is and is not guessing

@pytest_twisted.ensureDeferred
async def test_a_removed_users_phone_retrying_is_logged_once_and_never_blocks(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory({"security": {"slowdown_s": 0.0, "max_auth_failures": 4,
                                          "failure_window_s": 60, "cooldown_s": 60}})
    link = await pbx.link("udp")
    removed = Phone(link, "1009", "it used to work")

    statuses = []
    for _ in range(15):
        challenge = await removed.request("REGISTER", contacts=["<sip:1009@127.0.0.1>"])
        failed = await removed.request("REGISTER", contacts=["<sip:1009@127.0.0.1>"],
                                       authorization=removed.answer(challenge))
        statuses.append(failed.status)

    assert statuses == [401] * 15  # never refused: not guessing
    lines = pbx.security_log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert " pbx security unknown-user from 127.0.0.1 user=1009 " in lines[0]
    # The office's other phones behind the same address are not affected.
    colleague = Phone(link, "1001", PASSWORDS["1001"])
    assert (await colleague.register(algorithm="MD5")).status == 200


@pytest_twisted.ensureDeferred
async def test_a_nonce_from_before_a_restart_is_stale_not_a_failure(
        pbx_factory: Any) -> None:
    first = await pbx_factory(GUARD)
    phone = await first.phone("1001")
    contact = f"<{phone.contact_uri}>"
    challenge = await phone.request("REGISTER", contacts=[contact])
    held = phone.answer(challenge)  # the phone keeps this nonce across our restart
    assert (await phone.request("REGISTER", contacts=[contact],
                                authorization=held)).status == 200
    assert (first.data_dir / "nonce.key").stat().st_mode & 0o777 == 0o600
    await first.stop()

    again = await pbx_factory(GUARD)
    others = await again.phone("1002")
    for _ in range(3):  # this run's nonce counter passes the held nonce's
        assert (await others.request("REGISTER", contacts=[contact])).status == 401
    phone = await again.phone("1001")
    # The very request of the last run, sent again: the nonce is still ours
    # and within its lifetime, but its count was recorded by the last run.
    stale = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"],
                                authorization=held)

    assert stale.status == 401
    assert all(c.stale for c in stale.challenges)
    assert not again.security_log.exists() or again.security_log.read_text() == ""
    ok = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"],
                             authorization=phone.answer(stale))
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_a_nonce_not_ours_is_stale_with_the_right_password_and_a_guess_without(
        pbx_factory: Any) -> None:
    first = await pbx_factory(GUARD)
    phone = await first.phone("1001")
    challenge = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"])
    held = phone.answer(challenge)
    wrong = phone.again(password="a guess")
    await first.stop()
    (first.data_dir / "nonce.key").unlink()  # lost: the next run has another secret

    again = await pbx_factory(GUARD)
    phone = await again.phone("1001")
    contact = f"<{phone.contact_uri}>"
    stale = await phone.request("REGISTER", contacts=[contact], authorization=held)
    stale_again = await phone.request("REGISTER", contacts=[contact], authorization=held)
    guess = await phone.request("REGISTER", contacts=[contact], authorization=wrong)

    assert stale.status == stale_again.status == guess.status == 401
    assert all(c.stale for c in stale.challenges + stale_again.challenges)
    assert not any(c.stale for c in guess.challenges)
    lines = again.security_log.read_text().splitlines()
    assert [line.split(" pbx security ")[1].split()[0] for line in lines] == [
        "stale-nonce", "wrong-password"]  # the second stale nonce is not logged again
    assert "failure 1 of 4" in lines[1]  # only the guess counted toward the guard


# ----------------------------------------- the fail2ban filter of the docs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security-log.md"
HOST = r"(?P<host>[0-9a-fA-F:.]+)"  # what fail2ban's <HOST> matches, for addresses


def documented_failregex() -> re.Pattern[str]:
    """The failregex docs/security-log.md gives, with <HOST> as fail2ban reads it."""
    text = DOCS.read_text()
    [line] = [line for line in text.splitlines() if line.startswith("failregex = ")]
    return re.compile(line.removeprefix("failregex = ").replace("<HOST>", HOST))


@pytest_twisted.ensureDeferred
async def test_the_documented_fail2ban_regex_matches_exactly_the_guesses(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory(GUARD)
    link = await pbx.link("udp")
    guesser = Phone(link, "1001", "wrong")
    nobody = Phone(link, "ghost", "x")
    # The last name tries to forge a host for a filter that reads past the address.
    for phone, name in ((nobody, None), (nobody, "1001 from 6.6.6.6"), (guesser, None),
                        (guesser, None), (guesser, None), (guesser, None)):
        challenge = await phone.request("REGISTER", contacts=["<sip:x@127.0.0.1>"])
        await phone.request("REGISTER", contacts=["<sip:x@127.0.0.1>"],
                            authorization=phone.answer(challenge, username=name))
    other = await pbx.phone("1002", local_host="127.0.0.2")
    assert (await other.register(to_user="1001", algorithm="MD5")).status == 403

    lines = pbx.security_log.read_text().splitlines()
    kinds = [line.split(" pbx security ")[1].split()[0] for line in lines]
    assert kinds == ["unknown-user", "unknown-user", "wrong-password", "wrong-password",
                     "wrong-password", "blocked", "forbidden-user"]
    failregex = documented_failregex()
    matched = [(kind, found.group("host")) for kind, line in zip(kinds, lines, strict=True)
               if (found := failregex.search(line)) is not None]
    assert matched == [("wrong-password", "127.0.0.1")] * 3 + [("blocked", "127.0.0.1")]
    assert "user=1001%20from%206.6.6.6 " in lines[1]
