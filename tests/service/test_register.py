"""REGISTER end to end (RFC 3261 §10.3, RFC 8760), over every transport the PBX serves."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.service.conftest import PASSWORDS, TRANSPORTS, ticks
from tests.service.sipclient import Phone, header_params, new_branch


def challenge_shape(reply: Any) -> list[tuple[str, tuple[str, ...], str, bool, bool]]:
    """What a 401 offers, without the nonce: (realm, qop, algorithm, stale, has opaque)."""
    return [(c.realm, c.qop, c.algorithm, c.stale, c.opaque is not None)
            for c in reply.challenges]


OFFER = [("pbx.test", ("auth",), "MD5", False, True),  # the default order: MD5 first
         ("pbx.test", ("auth",), "SHA-256", False, True)]


def contact_expires(reply: Any) -> dict[str, int]:
    """Contact URI -> expires, as listed in a 200 to REGISTER."""
    found = {}
    for value in reply.contacts:
        uri = value[value.index("<") + 1:value.index(">")]
        found[uri] = int(header_params(value)["expires"])
    return found


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
@pytest_twisted.ensureDeferred
async def test_register_with_digest_over_each_transport(
        pbx_factory: Any, transport: str, algorithm: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)
    contact = f"<{phone.contact_uri}>"

    challenge = await phone.request("REGISTER", contacts=[contact], expires=300)

    assert challenge.status == 401
    values = challenge.get_all("WWW-Authenticate")
    assert len(values) == 2
    assert challenge_shape(challenge) == OFFER
    assert all('qop="auth"' in value for value in values)

    ok = await phone.request("REGISTER", contacts=[contact], expires=300,
                             authorization=phone.answer(challenge, algorithm=algorithm))

    assert ok.status == 200
    assert contact_expires(ok) == {phone.contact_uri: 300}
    rows = await pbx.rows_when(bool, "1001")
    assert [(r["contact"], r["transport"]) for r in rows] == [(phone.contact_uri, transport)]
    assert rows[0]["source_host"] == "127.0.0.1"
    assert rows[0]["source_port"] == phone.link.local_port


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws", "wss"])
@pytest_twisted.ensureDeferred
async def test_responses_come_back_on_the_requests_connection(
        pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)
    bystander = await pbx.phone("1002", transport)

    ok = await phone.register()

    assert ok.status == 200
    assert not bystander.link.frames.pending
    # The connection stays open for the next request.
    assert (await phone.request("OPTIONS")).status == 200


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_via_gets_received_and_rport(pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)
    branch = new_branch()
    # A phone behind NAT: it believes it is 192.0.2.10:5060.
    via = f"SIP/2.0/{transport.upper()} 192.0.2.10:5060;rport;branch={branch}"

    reply = await phone.request("OPTIONS", via=via)

    assert reply.status == 200
    top = reply.get("via")
    assert top is not None
    assert top.startswith(f"SIP/2.0/{transport.upper()} 192.0.2.10:5060")
    params = header_params(top)
    assert params["received"] == "127.0.0.1"
    assert params["rport"] == str(phone.link.local_port)
    assert params["branch"] == branch
    if transport == "udp":
        # Sent to where the request really came from, not to 192.0.2.10.
        assert phone.link.senders == [pbx.address("udp")]


@pytest_twisted.ensureDeferred
async def test_via_without_rport_gets_only_received(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", "udp")
    via = f"SIP/2.0/UDP 192.0.2.10:5060;branch={new_branch()}"

    reply = await phone.request("OPTIONS", via=via)

    params = header_params(reply.get("via") or "")
    assert params["received"] == "127.0.0.1"
    assert "rport" not in params


# ------------------------------------------------------------- §10.3 rules


@pytest_twisted.ensureDeferred
async def test_expires_below_minimum_is_423_with_min_expires(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.register(expires=30)

    assert reply.status == 423
    assert reply.get("Min-Expires") == "60"
    await ticks(pbx.reactor, 0.3)  # one flush
    assert pbx.rows("1001") == []


@pytest_twisted.ensureDeferred
async def test_expires_above_maximum_is_cut_down(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.register(expires=7200)

    assert reply.status == 200
    assert contact_expires(reply) == {phone.contact_uri: 1800}
    rows = await pbx.rows_when(bool, "1001")
    assert rows[0]["expires_at"] - rows[0]["updated_at"] == pytest.approx(1800)


@pytest_twisted.ensureDeferred
async def test_contact_expires_parameter_wins_over_header(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.register(contacts=[f"<{phone.contact_uri}>;expires=120"], expires=900)

    assert contact_expires(reply) == {phone.contact_uri: 120}


@pytest_twisted.ensureDeferred
async def test_two_contacts_are_listed_best_q_first(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    desk = f"sip:1001@127.0.0.1:{phone.link.local_port};transport=udp"
    mobile = "sip:1001@198.51.100.7:5062"

    reply = await phone.register(contacts=[f"<{desk}>;q=0.3", f"<{mobile}>;q=0.9"])

    assert reply.status == 200
    assert list(contact_expires(reply)) == [mobile, desk]
    rows = await pbx.rows_when(lambda rows: len(rows) == 2, "1001")
    assert {r["contact"]: r["q"] for r in rows} == {desk: 0.3, mobile: 0.9}


@pytest_twisted.ensureDeferred
async def test_two_phones_of_one_user_both_listed(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    desk = await pbx.phone("1001", "udp")
    softphone = await pbx.phone("1001", "tcp")

    assert (await desk.register()).status == 200
    reply = await softphone.register()

    assert set(contact_expires(reply)) == {desk.contact_uri, softphone.contact_uri}
    rows = await pbx.rows_when(lambda rows: len(rows) == 2, "1001")
    assert {r["contact"]: r["transport"] for r in rows} == {
        desk.contact_uri: "udp", softphone.contact_uri: "tcp"}


@pytest_twisted.ensureDeferred
async def test_query_lists_bindings_and_star_removes_them_all(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    other = "sip:1001@198.51.100.7:5062"
    assert (await phone.register(contacts=[phone.contact_uri, other])).status == 200
    await pbx.rows_when(lambda rows: len(rows) == 2, "1001")

    query = await phone.register(contacts=[], expires=None)

    assert query.status == 200
    assert set(contact_expires(query)) == {phone.contact_uri, other}

    removed = await phone.register(contacts=["*"], expires=0)

    assert removed.status == 200
    assert removed.contacts == []
    assert (await phone.register(contacts=[], expires=None)).contacts == []
    await pbx.rows_when(lambda rows: rows == [], "1001")


@pytest_twisted.ensureDeferred
async def test_star_without_expires_zero_is_400(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.register(contacts=["*"], expires=300)

    assert reply.status == 400


@pytest_twisted.ensureDeferred
async def test_lower_cseq_on_the_same_call_id_is_refused(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    challenge = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=10)
    ok = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=11,
                             authorization=phone.answer(challenge))
    assert ok.status == 200

    # Correctly authenticated (next nonce count), but an older CSeq: a replay.
    late = await phone.request("REGISTER", contacts=[contact], expires=600, cseq=5,
                               authorization=phone.again())

    assert late.status == 500
    query = await phone.request("REGISTER", cseq=12, authorization=phone.again())
    assert contact_expires(query) == {phone.contact_uri: 300}


def short_echo(*, slowdown_after: int, block_after: int) -> dict[str, Any]:
    """T1 of 20 ms (the echo of a stateless 200 lasts 8*T1, 0.16 s), and a strict guard."""
    return {"sip": {"t1_ms": 20, "t2_ms": 200},
            "security": {"slowdown_after": slowdown_after, "slowdown_s": 1.0,
                         "max_auth_failures": block_after, "failure_window_s": 60,
                         "cooldown_s": 60}}


async def register_keeping_bytes(phone: Phone, *, expires: int, cseq: int) -> tuple[bytes, Any]:
    """Challenge, then the authenticated REGISTER: its bytes (to send again) and its 200."""
    contact = f"<{phone.contact_uri}>"
    challenge = await phone.request("REGISTER", contacts=[contact], expires=expires,
                                    cseq=cseq - 1)
    register = phone.build("REGISTER", contacts=[contact], expires=expires, cseq=cseq,
                           authorization=phone.answer(challenge))
    phone.link.send(register)
    ok = await phone.link.response()
    assert ok.status == 200
    return register, ok


@pytest_twisted.ensureDeferred
async def test_a_retransmission_after_the_echo_window_is_answered_as_before(
        pbx_factory: Any) -> None:
    """The 200 to a REGISTER is stateless (a few T1 of echo, not Timer J).

    A retransmission that arrives later, with the nonce count it had the
    first time, is the same registration: 200 with the bindings, nothing
    changed, and no failure charged to the address (three would block it).
    """
    pbx = await pbx_factory(short_echo(slowdown_after=2, block_after=3))
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    register, ok = await register_keeping_bytes(phone, expires=300, cseq=21)
    phone.link.send(register)  # within the echo window: the very same bytes
    assert (await phone.link.response()).raw == ok.raw
    assert len(pbx.service.layer) == 0

    await phone.link.silence(0.3)  # 8*T1 is 0.16 s: the echo is over
    assert pbx.service.layer.tombstones == 0
    for _ in range(3):
        phone.link.send(register)
        again = await phone.link.response()
        assert again.status == 200
        assert again.to_tag == ok.to_tag
        assert contact_expires(again) == {phone.contact_uri: 300}

    # Nothing was charged: two wrong passwords now are a first and a second
    # failure, both challenged; one charged retransmission would make the
    # second the third, and the address blocked (403).
    typo = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=22,
                               authorization=phone.again(password="typo"))
    assert typo.status == 401
    typo = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=23,
                               authorization=phone.answer(typo, password="typo2"))
    assert typo.status == 401
    assert not pbx.security_log.read_text().count("blocked")
    rows = await pbx.rows_when(bool, "1001")
    assert [r["contact"] for r in rows] == [phone.contact_uri]


@pytest_twisted.ensureDeferred
async def test_a_late_copy_of_an_older_registration_changes_nothing(pbx_factory: Any) -> None:
    """SIPp's way: each registration a new Call-ID and nonce. A late retransmission
    of an older one is answered with the bindings as they are, not applied again."""
    pbx = await pbx_factory({"sip": {"t1_ms": 20, "t2_ms": 200}})
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    older, first = await register_keeping_bytes(phone, expires=600, cseq=41)
    assert contact_expires(first) == {phone.contact_uri: 600}
    phone.call_id = "a-second-registration@127.0.0.1"
    challenge = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=1)
    newer = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=2,
                                authorization=phone.answer(challenge))
    assert contact_expires(newer) == {phone.contact_uri: 300}
    await phone.link.silence(0.3)  # past the echo of the older 200

    phone.link.send(older)
    copy = await phone.link.response()

    assert copy.status == 200
    assert contact_expires(copy) == {phone.contact_uri: 300}
    rows = await pbx.rows_when(bool, "1001")
    assert len(rows) == 1 and rows[0]["call_id"] == "a-second-registration@127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_an_old_register_replayed_after_a_newer_one_is_refused(pbx_factory: Any) -> None:
    """A copy of an older use of a nonce is a replay: challenged afresh, charged nothing."""
    pbx = await pbx_factory(short_echo(slowdown_after=1, block_after=1))
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    old, _ = await register_keeping_bytes(phone, expires=600, cseq=31)
    newer = await phone.request("REGISTER", contacts=[contact], expires=300, cseq=32,
                                authorization=phone.again())
    assert newer.status == 200
    await phone.link.silence(0.3)

    phone.link.send(old)
    replayed = await phone.link.response()

    # A replayed nonce count: challenged afresh, but no guess, so nothing is charged.
    assert replayed.status == 401
    assert replayed.challenges
    assert not pbx.security_log.exists() or not pbx.security_log.read_text()
    for _ in range(3):  # one failure would block the address for a minute
        phone.link.send(old)
        assert (await phone.link.response()).status == 401
    query = await phone.request("REGISTER", cseq=33, authorization=phone.again())
    assert query.status == 200
    assert contact_expires(query) == {phone.contact_uri: 300}


@pytest_twisted.ensureDeferred
async def test_user_may_not_register_another_users_address(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    intruder = await pbx.phone("1001")

    reply = await intruder.register(to_user="1002", username="1001")

    assert reply.status == 403
    await ticks(pbx.reactor, 0.3)
    assert pbx.rows("1002") == []
    assert "forbidden-user from 127.0.0.1 user=1001" in pbx.security_log.read_text()


@pytest_twisted.ensureDeferred
async def test_unknown_user_gets_the_same_challenge_as_a_known_one(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    known = await pbx.phone("1001")
    unknown = Phone(known.link, "9999", "guess")

    known_challenge = await known.request("REGISTER", contacts=[f"<{known.contact_uri}>"])
    unknown_challenge = await unknown.request("REGISTER", contacts=[f"<{known.contact_uri}>"])

    assert unknown_challenge.status == known_challenge.status == 401
    assert challenge_shape(unknown_challenge) == challenge_shape(known_challenge) == OFFER

    def names(reply: Any) -> list[str]:
        return [name.lower() for name, _ in reply.headers]

    assert names(unknown_challenge) == names(known_challenge)
    # And a guessed password is answered exactly like a wrong one.
    wrong = await known.request("REGISTER", contacts=[f"<{known.contact_uri}>"],
                                authorization=known.answer(known_challenge, password="nope"))
    guessed = await unknown.request("REGISTER", contacts=[f"<{known.contact_uri}>"],
                                    authorization=unknown.answer(unknown_challenge))
    assert wrong.status == guessed.status == 401
    assert challenge_shape(wrong) == challenge_shape(guessed) == OFFER


@pytest_twisted.ensureDeferred
async def test_expired_nonce_is_challenged_again_as_stale(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"registrar": {"nonce_lifetime_s": 1}})
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    challenge = await phone.request("REGISTER", contacts=[contact])
    authorization = phone.answer(challenge)

    await ticks(pbx.reactor, 1.1)
    stale = await phone.request("REGISTER", contacts=[contact], authorization=authorization)

    assert stale.status == 401
    assert [c.stale for c in stale.challenges] == [True, True]
    assert all("stale=true" in v.lower() for v in stale.get_all("WWW-Authenticate"))
    # The phone retries on the fresh nonce without asking its user.
    ok = await phone.request("REGISTER", contacts=[contact], authorization=phone.answer(stale))
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_user_with_only_an_md5_hash_is_offered_md5(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1003")
    assert phone.password == PASSWORDS["1003"]

    challenge = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"])

    assert challenge.status == 401
    assert [c.algorithm for c in challenge.challenges] == ["MD5"]
    ok = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"],
                             authorization=phone.answer(challenge, algorithm="MD5"))
    assert ok.status == 200
    await pbx.rows_when(bool, "1003")


@pytest_twisted.ensureDeferred
async def test_refresh_keeps_one_row_and_updates_it(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1002", "tcp")
    assert (await phone.register(expires=300)).status == 200
    await pbx.rows_when(bool, "1002")

    refreshed = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"],
                                    expires=900, authorization=phone.again())

    assert contact_expires(refreshed) == {phone.contact_uri: 900}
    rows = await pbx.rows_when(
        lambda rows: len(rows) == 1 and rows[0]["expires_at"] - rows[0]["updated_at"] > 600,
        "1002")
    assert rows[0]["cseq"] == phone.cseq

