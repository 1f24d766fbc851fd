"""REGISTER end to end (RFC 3261 §10.3, RFC 8760), over every transport the PBX serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent

from pbx.config import RegistrarSection
from pbx.sip.digest import Challenge, Credentials, authorization_for
from tests.service.conftest import DOMAIN, PASSWORDS, TRANSPORTS, ticks
from tests.service.sipclient import Phone, header_params, new_branch


def challenge_shape(reply: Any) -> list[tuple[str, tuple[str, ...], str, bool, bool]]:
    """What a 401 offers, without the nonce: (realm, qop, algorithm, stale, has opaque)."""
    return [(c.realm, c.qop, c.algorithm, c.stale, c.opaque is not None)
            for c in reply.challenges]


OFFER = [("pbx.test", ("auth",), "SHA-256", False, True),  # RFC 8760 §2.4: strongest first
         ("pbx.test", ("auth",), "MD5", False, True)]
"""What a phone taking SHA-256 is offered (every test phone here: see conftest.py)."""


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



# ------------------------------------------ which phones are offered SHA-256

SHIPPED_SHA256_USER_AGENTS = list(RegistrarSection().sha256_user_agents)
BARESIP = "baresip v1.0.0 (x86_64/linux)"  # what Debian's baresip 1.0 sends
LINPHONEC = "Linphonec/5.1.65"  # what Debian's linphonec 5.1 sends


async def request_as(phone: Phone, user_agent: str | None, method: str = "REGISTER",
                     **kwargs: Any) -> Any:
    """`phone.request`, with this User-Agent in place of the test client's (None: none)."""
    data = phone.build(method, **kwargs)
    ours = b"User-Agent: service-test\r\n"
    assert ours in data
    data = data.replace(ours, b"" if user_agent is None else
                        f"User-Agent: {user_agent}\r\n".encode())
    phone.link.send(data)
    return await phone.link.response(5.0)


@pytest.mark.parametrize(("user", "user_agent", "offered"), [
    ("1001", BARESIP, ["MD5"]),
    ("1001", None, ["MD5"]),
    ("1001", "SIPp", ["MD5"]),
    ("1001", LINPHONEC, ["SHA-256", "MD5"]),
    ("1001", "LinphoneAndroid/5.2 (belle-sip/5.2)", ["SHA-256", "MD5"]),
    ("1003", LINPHONEC, ["MD5"]),  # only an MD5 hash is stored for 1003
])
@pytest_twisted.ensureDeferred
async def test_shipped_default_offers_sha256_only_to_phones_known_to_take_it(
        pbx_factory: Any, user: str, user_agent: str | None, offered: list[str]) -> None:
    pbx = await pbx_factory({"registrar": {"sha256_user_agents": SHIPPED_SHA256_USER_AGENTS}})
    phone = await pbx.phone(user)
    contact = f"<{phone.contact_uri}>"

    challenge = await request_as(phone, user_agent, contacts=[contact])

    assert challenge.status == 401
    assert [c.algorithm for c in challenge.challenges] == offered
    ok = await request_as(phone, user_agent, contacts=[contact],
                          authorization=phone.answer(challenge))
    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_sha256_credentials_are_accepted_whatever_was_offered(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"registrar": {"sha256_user_agents": []}})
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    challenge = await phone.request("REGISTER", contacts=[contact])
    assert [c.algorithm for c in challenge.challenges] == ["MD5"]

    # The nonce is the same whatever the algorithm: answer it with SHA-256.
    sha256 = Challenge(realm=DOMAIN, nonce=challenge.challenges[0].nonce,
                       algorithm="SHA-256", qop=("auth",), opaque=challenge.challenges[0].opaque)
    credentials = authorization_for(sha256, username="1001", password=PASSWORDS["1001"],
                                    method="REGISTER", uri=f"sip:{DOMAIN}", cnonce="c1", nc=1)
    ok = await phone.request("REGISTER", contacts=[contact],
                             authorization=credentials.to_header_value())

    assert ok.status == 200


@pytest_twisted.ensureDeferred
async def test_invites_are_challenged_by_the_same_rule(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"registrar": {"sha256_user_agents": SHIPPED_SHA256_USER_AGENTS}})
    phone = await pbx.phone("1001")

    for user_agent, offered in ((BARESIP, ["MD5"]), (LINPHONEC, ["SHA-256", "MD5"])):
        challenge = await request_as(phone, user_agent, "INVITE", to_user="1002",
                                     request_uri=f"sip:1002@{DOMAIN}",
                                     contacts=[f"<{phone.contact_uri}>"])
        assert challenge.status == 407
        assert [Challenge.parse(value).algorithm
                for value in challenge.get_all("Proxy-Authenticate")] == offered
        phone.link.send(phone.build("ACK", to_user="1002", to_tag=challenge.to_tag,
                                    cseq=phone.cseq, request_uri=f"sip:1002@{DOMAIN}"))


@pytest_twisted.ensureDeferred
async def test_the_request_log_says_what_was_offered_and_what_authenticated(
        pbx_factory: Any, log_events: EventLoggingObserver) -> None:
    pbx = await pbx_factory({"registrar": {"sha256_user_agents": SHIPPED_SHA256_USER_AGENTS}})
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    challenge = await request_as(phone, LINPHONEC, contacts=[contact])
    ok = await request_as(phone, LINPHONEC, contacts=[contact],
                          authorization=phone.answer(challenge, algorithm="SHA-256"))
    assert ok.status == 200

    lines = [formatEvent(event) for event in log_events]
    assert any("REGISTER from udp:127.0.0.1:" in line and "answered 401 Unauthorized "
               f"offering SHA-256,MD5 to User-Agent '{LINPHONEC}'" in line for line in lines)
    assert any("answered 200 OK, authenticated with SHA-256" in line for line in lines)
    assert any(line.startswith("Registered 1001 from udp:127.0.0.1:")
               and "(authenticated with SHA-256)" in line for line in lines)


# ------------------------------------------------------------ SIGHUP

def registrar_config(tmp_path: Path, registrar: str) -> Path:
    """A config file with this [registrar] table, for reload tests."""
    path = tmp_path / "pbx.toml"
    listeners = "\n".join(f'{name} = "127.0.0.1:0"' for name in ("udp", "tcp"))
    path.write_text(
        f'[pbx]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[sip]\ndomain = "{DOMAIN}"\n{listeners}\n'
        f"[registrar]\n{registrar}\n"
        f'[security]\nlog_file = "{tmp_path / "security.log"}"\n'
        + "".join(f'[users.{user}]\npassword = "{PASSWORDS[user]}"\n'
                  for user in ("1001", "1002")))
    return path


@pytest_twisted.ensureDeferred
async def test_reload_applies_registrar_keys_and_keeps_nonces_and_bindings(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    path = registrar_config(tmp_path, "")  # the shipped defaults
    pbx = await pbx_factory(from_file=path)
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    assert (await phone.register(algorithm="MD5")).status == 200
    before = await request_as(phone, BARESIP, contacts=[contact])
    assert [c.algorithm for c in before.challenges] == ["MD5"]

    registrar_config(tmp_path, 'sha256_user_agents = ["baresip"]\nmin_expires_s = 120\n'
                               'digest_algorithms = ["MD5", "SHA-256"]')
    assert pbx.service.reload() is True

    after = await request_as(phone, BARESIP, contacts=[contact], expires=300)
    assert [c.algorithm for c in after.challenges] == ["SHA-256", "MD5"]
    # A nonce handed out before the reload still authenticates after it.
    too_brief = await request_as(phone, BARESIP, contacts=[contact], expires=90,
                                 authorization=phone.answer(before))
    assert too_brief.status == 423
    assert too_brief.get_all("Min-Expires") == ["120"]
    assert await pbx.rows_when(bool, "1001")  # the binding stayed

    registrar_config(tmp_path, 'digest_algorithms = ["MD5"]\nsha256_user_agents = ["*"]')
    assert pbx.service.reload() is True
    md5_only = await request_as(phone, LINPHONEC, contacts=[contact])
    assert [c.algorithm for c in md5_only.challenges] == ["MD5"]
    lines = [formatEvent(event) for event in log_events]
    assert not any("next restart" in line for line in lines)
    assert any("; applied ['registrar.min_expires_s', 'registrar.digest_algorithms', "
               "'registrar.sha256_user_agents']" in line for line in lines)


@pytest_twisted.ensureDeferred
async def test_reload_names_each_key_that_needs_a_restart_and_why(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    path = registrar_config(tmp_path, "")
    pbx = await pbx_factory(from_file=path)
    text = path.read_text().replace('tcp = "127.0.0.1:0"\n', "").replace(
        "[sip]\n", "[sip]\nt1_ms = 400\n")
    path.write_text(text)

    assert pbx.service.reload() is True

    warnings = [formatEvent(event) for event in log_events
                if event.get("log_level") is LogLevel.warn]
    assert "Changed sip.t1_ms takes effect at the next restart: the transaction timers are " \
           "set at start-up" in warnings
    # A listener is no longer such a key: the reload replaces it (test_service_tree.py).
    assert not any("sip.tcp" in line for line in warnings)
    assert await pbx.service.listeners_settled == ["tcp"]
    assert set(pbx.service.ports) == {"udp"}


@pytest_twisted.ensureDeferred
async def test_debug_log_shows_the_credentials_but_the_response_hash(
        pbx_factory: Any, log_events: EventLoggingObserver) -> None:
    pbx = await pbx_factory({"pbx": {"debug": True}})
    phone = await pbx.phone("1001")
    contact = f"<{phone.contact_uri}>"
    challenge = await phone.request("REGISTER", contacts=[contact])
    authorization = phone.answer(challenge, algorithm="SHA-256")
    ok = await phone.request("REGISTER", contacts=[contact], authorization=authorization)
    assert ok.status == 200

    credentials = Credentials.parse(authorization)
    logged = "\n".join(formatEvent(event) for event in log_events)
    [line] = [line for line in logged.splitlines() if line.startswith("Authorization:")]
    for shown in ('username="1001"', f'realm="{DOMAIN}"', f'nonce="{credentials.nonce}"',
                  f'uri="sip:{DOMAIN}"', "algorithm=SHA-256", "qop=auth",
                  f"nc={credentials.nc}", "response=<redacted>"):
        assert shown in line, (shown, line)
    assert credentials.response not in logged
    assert PASSWORDS["1001"] not in logged
