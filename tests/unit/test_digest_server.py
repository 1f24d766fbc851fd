"""Tests of digest's server side (`pbx.sip.digest_server`): nonces, replay, verify.

The authenticator is driven with an injected `now` and deterministic random
bytes (`digest_helpers.zeros`).
"""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx.sip import digest_server
from pbx.sip.digest import (
    Challenge,
    Credentials,
    authorization_for,
    compute_response,
)
from pbx.sip.digest_server import AuthResult, DigestAuthenticator
from pbx.sip.errors import SipParseError
from tests.unit.digest_helpers import (
    REALM,
    SECRET,
    T0,
    URI,
    answer,
    good_ha1,
    make_auth,
    respond,
    verify,
    zeros,
)

# --------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------


def test_challenges_one_per_algorithm_in_preference_order() -> None:
    auth = make_auth()
    plain = auth.challenges(T0)
    assert [c.algorithm for c in plain] == ["SHA-256", "MD5"]
    assert all(c.realm == REALM and c.qop == ("auth",) and c.opaque for c in plain)
    assert not any(c.stale for c in plain)
    assert all(c.stale for c in auth.challenges(T0, stale=True))


def test_nonces_unique_even_with_constant_randomness() -> None:
    auth = make_auth()
    nonces = {auth.challenges(T0)[0].nonce for _ in range(1000)}
    assert len(nonces) == 1000
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(set(n) <= alphabet for n in nonces)  # base64url, no padding


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
def test_right_password_is_ok(algorithm: str) -> None:
    auth = make_auth(algorithms=(algorithm,))
    creds = answer(auth, T0, algorithm=algorithm)
    wire = Credentials.parse(creds.to_header_value())
    assert verify(auth, wire, T0 + 1) is AuthResult.OK
    assert auth.tracked_nonce_count == 1


def test_wrong_password() -> None:
    auth = make_auth()
    creds = answer(auth, T0, password="guess")
    assert verify(auth, creds, T0 + 1) is AuthResult.WRONG_PASSWORD


def test_unknown_user_answers_like_wrong_password() -> None:
    auth = make_auth()
    creds = answer(auth, T0)
    result = auth.verify(creds, "REGISTER", ha1=None, now=T0 + 1)
    assert result is AuthResult.WRONG_PASSWORD
    assert auth.tracked_nonce_count == 0


def test_method_is_part_of_the_digest() -> None:
    auth = make_auth()
    creds = answer(auth, T0)  # hashed for REGISTER
    result = auth.verify(creds, "INVITE", ha1=good_ha1(), now=T0 + 1)
    assert result is AuthResult.WRONG_PASSWORD


def test_realm_mismatch() -> None:
    auth = make_auth()
    (challenge, _) = auth.challenges(T0)
    other = Challenge(realm="evil.example.com", nonce=challenge.nonce, qop=("auth",))
    creds = authorization_for(
        other, username="1001", password="secret", method="REGISTER", uri=URI, cnonce="c"
    )
    assert verify(auth, creds, T0 + 1) is AuthResult.REALM_MISMATCH


def _with(creds: Credentials, **changes: str | None) -> Credentials:
    fields = {name: getattr(creds, name) for name in Credentials.__dataclass_fields__}
    fields.update(changes)
    return Credentials(**fields)


@pytest.mark.parametrize(
    ("offered", "changes", "allow_no_qop"),
    [
        (("SHA-256",), {"algorithm": "MD5"}, True),  # not offered
        (("SHA-256", "MD5"), {"algorithm": "SHA-512-256"}, True),  # unknown to us
        (("SHA-256", "MD5"), {"qop": "auth-int"}, True),
        (("SHA-256", "MD5"), {"qop": None, "nc": None, "cnonce": None}, False),
        (("MD5-sess",), {"qop": None, "nc": None, "cnonce": None, "algorithm": "MD5-sess"}, True),
    ],
)
def test_unsupported(
    offered: tuple[str, ...], changes: dict[str, str | None], allow_no_qop: bool
) -> None:
    auth = make_auth(algorithms=offered, allow_no_qop=allow_no_qop)
    creds = _with(answer(auth, T0, algorithm=offered[0]), **changes)
    result = auth.verify(creds, "REGISTER", ha1=good_ha1(offered[0]), now=T0 + 1)
    assert result is AuthResult.UNSUPPORTED


def test_no_qop_is_accepted_by_default_without_replay_protection() -> None:
    auth = make_auth()
    (sha, _) = auth.challenges(T0)
    legacy = Challenge(realm=REALM, nonce=sha.nonce, algorithm="MD5")  # no qop offered
    creds = authorization_for(
        legacy, username="1001", password="secret", method="REGISTER", uri=URI, cnonce="x"
    )
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert verify(auth, creds, T0 + 1) is AuthResult.OK
    assert verify(auth, creds, T0 + 2) is AuthResult.OK  # documented: replayable
    assert auth.tracked_nonce_count == 0
    assert verify(auth, creds, T0 + 300) is AuthResult.STALE  # only the lifetime limits it


def test_nonce_forged_with_another_secret_is_bad_nonce() -> None:
    forger = DigestAuthenticator(REALM, b"another secret, 32 bytes long!!!", random_bytes=zeros)
    creds = answer(forger, T0)
    assert verify(make_auth(), creds, T0 + 1) is AuthResult.BAD_NONCE


def test_nonce_from_another_realm_same_secret_is_bad_nonce() -> None:
    other = DigestAuthenticator("other.example.org", SECRET, random_bytes=zeros)
    (challenge, _) = other.challenges(T0)
    mine = Challenge(realm=REALM, nonce=challenge.nonce, qop=("auth",), algorithm="SHA-256")
    creds = authorization_for(
        mine, username="1001", password="secret", method="REGISTER", uri=URI, cnonce="c"
    )
    assert verify(make_auth(), creds, T0 + 1) is AuthResult.BAD_NONCE


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n[:-1] + ("A" if n[-1] != "A" else "B"),  # HMAC no longer matches
        lambda n: n[:10] + ("B" if n[10] != "B" else "C") + n[11:],  # created time changed
        lambda n: n.replace("-", "+").replace("_", "/") if ("-" in n or "_" in n) else n[:-1],
        lambda n: n[:-2],
        lambda n: n + "AAAA",
        lambda n: "é" * len(n),
        lambda n: "",
    ],
)
def test_tampered_or_garbage_nonce_is_bad_nonce(mangle: Callable[[str], str]) -> None:
    auth = make_auth()
    creds = answer(auth, T0)
    bad_nonce = mangle(creds.nonce)
    assert bad_nonce != creds.nonce
    challenge = Challenge(
        realm=REALM, nonce=bad_nonce, algorithm="SHA-256", qop=("auth",), opaque=creds.opaque
    )
    forged = authorization_for(
        challenge, username="1001", password="secret", method="REGISTER", uri=URI, cnonce="c"
    )
    assert verify(auth, forged, T0 + 1) is AuthResult.BAD_NONCE



def test_the_same_nonce_spelt_in_the_standard_alphabet_is_refused() -> None:
    """base64url's "-" and "_" read as "+" and "/" would give the same bytes: one spelling only."""
    auth = make_auth()
    creds = next(c for c in (answer(auth, T0) for _ in range(200))
                 if "-" in c.nonce or "_" in c.nonce)
    respelt = creds.nonce.replace("-", "+").replace("_", "/")
    challenge = Challenge(
        realm=REALM, nonce=respelt, algorithm="SHA-256", qop=("auth",), opaque=creds.opaque
    )
    forged = authorization_for(
        challenge, username="1001", password="secret", method="REGISTER", uri=URI, cnonce="c"
    )
    assert verify(auth, forged, T0 + 1) is AuthResult.BAD_NONCE
    assert verify(auth, creds, T0 + 1) is AuthResult.OK

def test_opaque_mismatch_is_bad_nonce_and_absent_opaque_is_tolerated() -> None:
    auth = make_auth()
    creds = answer(auth, T0)
    assert verify(auth, _with(creds, opaque="not-ours"), T0 + 1) is AuthResult.BAD_NONCE
    assert verify(auth, _with(creds, opaque=None), T0 + 1) is AuthResult.OK


def test_stale_at_exactly_the_lifetime() -> None:
    auth = make_auth(nonce_lifetime_s=300.0)
    (challenge, _) = auth.challenges(T0)
    assert verify(auth, respond(challenge, nc=1), T0 + 299.999) is AuthResult.OK
    assert verify(auth, respond(challenge, nc=2), T0 + 300.0) is AuthResult.STALE
    (fresh, _) = auth.challenges(T0, stale=True)
    assert fresh.stale
    assert verify(auth, respond(fresh, nc=1), T0 + 300.0) is AuthResult.STALE


def test_stale_is_only_said_to_a_right_digest() -> None:
    auth = make_auth()
    creds = answer(auth, T0, password="guess")
    assert verify(auth, creds, T0 + 1000) is AuthResult.WRONG_PASSWORD


def test_nonce_from_the_future_is_stale() -> None:
    auth = make_auth()
    assert verify(auth, answer(auth, T0), T0 - 1) is AuthResult.STALE


def test_replay_is_detected() -> None:
    auth = make_auth()
    (challenge, _) = auth.challenges(T0)
    first = respond(challenge, nc=1)
    assert verify(auth, first, T0 + 1) is AuthResult.OK
    assert verify(auth, first, T0 + 2) is AuthResult.COPY  # the last nc again
    assert verify(auth, respond(challenge, nc=3), T0 + 3) is AuthResult.OK
    assert verify(auth, first, T0 + 3) is AuthResult.REPLAY  # below the last one now
    assert verify(auth, respond(challenge, nc=2), T0 + 4) is AuthResult.REPLAY
    assert verify(auth, respond(challenge, nc=3), T0 + 5) is AuthResult.COPY
    assert verify(auth, respond(challenge, nc=4), T0 + 6) is AuthResult.OK
    assert auth.tracked_nonce_count == 1


def test_failed_attempt_does_not_advance_the_count() -> None:
    auth = make_auth()
    (challenge, _) = auth.challenges(T0)
    bogus = respond(challenge, nc=0xFFFFFFFF, password="guess")
    assert verify(auth, bogus, T0 + 1) is AuthResult.WRONG_PASSWORD
    assert verify(auth, respond(challenge, nc=1), T0 + 2) is AuthResult.OK


def test_garbage_flood_costs_no_memory() -> None:
    auth = make_auth(max_tracked_nonces=10)
    for i in range(500):
        verify(auth, answer(auth, T0 + i, password="guess"), T0 + i)
    assert auth.tracked_nonce_count == 0


def test_table_is_bounded_and_an_evicted_nonce_cannot_start_over() -> None:
    auth = make_auth(max_tracked_nonces=3)
    unused = answer(auth, T0)
    first = answer(auth, T0 + 1)
    for i in range(1, 11):
        creds = first if i == 1 else answer(auth, T0 + i)
        assert verify(auth, creds, T0 + i) is AuthResult.OK
        assert auth.tracked_nonce_count == min(i, 3)
    # Evicted: replaying nc=1 would pass if the table had simply forgotten it.
    assert verify(auth, first, T0 + 20) is AuthResult.STALE
    assert verify(auth, unused, T0 + 20) is AuthResult.STALE
    assert verify(auth, answer(auth, T0 + 20), T0 + 20) is AuthResult.OK
    assert auth.tracked_nonce_count == 3


def test_an_expired_nonce_is_stale_whatever_the_ring_holds() -> None:
    auth = make_auth(nonce_lifetime_s=300.0)
    (challenge, _) = auth.challenges(T0)
    assert verify(auth, respond(challenge, nc=1), T0 + 1) is AuthResult.OK
    assert verify(auth, respond(challenge, nc=2), T0 + 299) is AuthResult.OK
    assert verify(auth, respond(challenge, nc=3), T0 + 300) is AuthResult.STALE


def test_tracked_nonces_cost_no_memory_beyond_the_ring() -> None:
    """The replay table is allocated once: 5,000 phones' nonces add nothing to it."""
    auth = make_auth(max_tracked_nonces=8192)
    ready = [answer(auth, T0, password="secret") for _ in range(5000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for creds in ready:
            assert verify(auth, creds, T0 + 1) is AuthResult.OK
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert auth.tracked_nonce_count == 5000
    assert grown < 20_000  # a dict of nonces: about 800,000


def test_a_nonce_from_before_a_restart_under_the_same_secret_starts_over_safely() -> None:
    """A new run's counter starts again: an old nonce must not inherit a new one's slot."""
    old_run = make_auth()
    for _ in range(10):
        old_run.challenges(T0)
    (old_challenge, _) = old_run.challenges(T0)  # counter 11 in the old run
    new_run = make_auth()  # same secret, counter back at 0
    assert verify(new_run, respond(old_challenge, nc=1), T0 + 1) is AuthResult.STALE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ("SHA-512-256",)},
        {"algorithms": ()},
        {"algorithms": ("MD5", "md5")},
        {"nonce_lifetime_s": 0.0},
        {"max_tracked_nonces": 0},
    ],
)
def test_constructor_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_auth(**kwargs)
    with pytest.raises(ValueError):
        DigestAuthenticator(REALM, b"short")


@given(
    field=st.sampled_from(["username", "uri", "response", "cnonce", "opaque", "nonce"]),
    text=st.text(),
    nc=st.from_regex(r"[0-9a-fA-F]{8}", fullmatch=True),
    algorithm=st.sampled_from(["MD5", "sha-256", "MD5-sess", "X"]),
)
def test_verify_answers_any_well_formed_credentials(
    field: str, text: str, nc: str, algorithm: str
) -> None:
    """Whatever arrives parses or raises SipParseError; verify then always answers."""
    auth = make_auth(algorithms=("SHA-256", "MD5", "MD5-sess"))
    base = answer(auth, T0)
    header = _with(base, algorithm=algorithm, nc=nc).to_header_value()
    try:
        creds = Credentials.parse(header.replace(f'{field}="', f'{field}="{text}', 1))
    except SipParseError:
        return
    assert isinstance(verify_any(auth, creds), AuthResult)


def verify_any(auth: DigestAuthenticator, creds: Credentials) -> AuthResult:
    return auth.verify(creds, "REGISTER", ha1=good_ha1(), now=T0 + 1)


def test_undecodable_bytes_hash_as_sent() -> None:
    """The message layer keeps undecodable bytes as surrogateescape; so do we."""
    raw_uri = b"sip:\xe9t\xe9@pbx.example.org"  # Latin-1, not UTF-8
    uri = raw_uri.decode("utf-8", "surrogateescape")
    ha1 = good_ha1("MD5")
    ha2 = hashlib.md5(b"REGISTER:" + raw_uri).hexdigest()
    expected = hashlib.md5(f"{ha1}:n:{ha2}".encode()).hexdigest()
    assert compute_response(ha1=ha1, nonce="n", method="REGISTER", uri=uri) == expected
    header = f'Digest username="1001", realm="r", nonce="n", uri="{uri}", response="{expected}"'
    assert Credentials.parse(header).uri == uri



@pytest.mark.parametrize("stale", [False, True])
def test_challenge_values_are_the_challenges_formatted(stale: bool) -> None:
    """The fast path a registrar uses writes exactly what Challenge objects write."""
    fixed = iter([b"\x01" * 8, b"\x01" * 8])
    first = DigestAuthenticator("pbx.test", b"k" * 32, random_bytes=lambda n: next(fixed))
    second = DigestAuthenticator("pbx.test", b"k" * 32, random_bytes=lambda n: b"\x01" * 8)
    values = first.challenge_values(1000.0, stale=stale)
    objects = [c.to_header_value() for c in second.challenges(1000.0, stale=stale)]
    assert values == objects
    assert [Challenge.parse(v).algorithm for v in values] == ["SHA-256", "MD5"]
    only_md5 = second.challenge_values(1000.0, algorithms=["MD5"])
    assert [Challenge.parse(v).algorithm for v in only_md5] == ["MD5"]



# ------------------------------------------------ the recent-nonce shortcut


def _counting_bytes() -> Callable[[int], bytes]:
    """Random bytes that differ per nonce but alike for two authenticators."""
    drawn = [0]

    def draw(count: int) -> bytes:
        drawn[0] += 1
        return (drawn[0] * 0x9E3779B97F4A7C15 % 2**64).to_bytes(8, "big")[:count]
    return draw


@settings(max_examples=60)
@given(st.lists(st.tuples(
    st.integers(0, 40),  # which nonce, counted back from the last issued
    st.integers(0, 4),  # nc
    st.sampled_from(["secret", "guess"]),
    st.sampled_from(["as-issued", "last-char", "respelt", "truncated"]),
    st.floats(0, 400)), max_size=30), st.integers(1, 60))
def test_recent_nonces_answer_as_the_mac_does(
        attempts: list[tuple[int, int, str, str, float]], issued: int) -> None:
    """With the shortcut or without it (its table emptied), every answer is the same."""
    shortcut = DigestAuthenticator(REALM, SECRET, random_bytes=_counting_bytes(),
                                   max_tracked_nonces=16)
    checked = DigestAuthenticator(REALM, SECRET, random_bytes=_counting_bytes(),
                                  max_tracked_nonces=16)
    challenges = []
    for i in range(issued):
        mine = shortcut.challenges(T0 + i)
        assert checked.challenges(T0 + i) == mine
        challenges.append(mine[0])
    for back, nc, password, mangle, later in attempts:
        challenge = challenges[max(0, len(challenges) - 1 - back)]
        nonce = {
            "as-issued": challenge.nonce,
            "last-char": challenge.nonce[:-1] + ("A" if challenge.nonce[-1] != "A" else "B"),
            "respelt": challenge.nonce.replace("-", "+").replace("_", "/"),
            "truncated": challenge.nonce[:-4],
        }[mangle]
        creds = authorization_for(
            Challenge(realm=REALM, nonce=nonce, algorithm=challenge.algorithm,
                      qop=("auth",), opaque=challenge.opaque),
            username="1001", password=password, method="REGISTER", uri=URI, cnonce="c",
            nc=max(nc, 1))
        checked._recent.clear()
        assert verify(shortcut, creds, T0 + later) is verify(checked, creds, T0 + later)
        assert shortcut.tracked_nonce_count == checked.tracked_nonce_count


def test_recent_nonces_are_bounded_and_an_older_nonce_is_checked_by_its_mac() -> None:
    auth = make_auth()
    first = answer(auth, T0)
    assert first.nonce in auth._recent
    later = [answer(auth, T0) for _ in range(digest_server._RECENT_NONCES + 100)]
    assert len(auth._recent) == digest_server._RECENT_NONCES
    assert first.nonce not in auth._recent
    assert verify(auth, first, T0 + 1) is AuthResult.OK  # by its MAC
    assert verify(auth, later[-1], T0 + 1) is AuthResult.OK  # from the table
    assert auth._nonce_body(later[-1].nonce) is not None
    body = auth._nonce_body(later[-1].nonce)
    auth._recent.clear()
    assert auth._nonce_body(later[-1].nonce) == body


def test_a_nonce_issued_twice_leaves_the_recent_table_consistent() -> None:
    """Constant randomness, a wrapped counter and the same time give the same nonce twice."""
    auth = make_auth()
    auth._counter = 0xFFFFFFFF - digest_server._RECENT_NONCES // 2
    first = answer(auth, T0)
    auth._counter = 0xFFFFFFFF - digest_server._RECENT_NONCES // 2
    again = answer(auth, T0)
    assert again.nonce == first.nonce
    for _ in range(2 * digest_server._RECENT_NONCES):
        answer(auth, T0 + 1)
    assert len(auth._recent) == digest_server._RECENT_NONCES


def test_nonces_of_two_runs_with_the_same_counter_keep_their_own_counts() -> None:
    """The replay slot knows a nonce by its counter and half its random part."""
    old_run = DigestAuthenticator(REALM, SECRET, random_bytes=lambda n: b"\x01" * n)
    new_run = DigestAuthenticator(REALM, SECRET, random_bytes=lambda n: b"\x02" * n)
    old = [answer(old_run, T0) for _ in range(5)][-1]
    new = [answer(new_run, T0) for _ in range(5)][-1]
    assert verify(new_run, new, T0 + 1) is AuthResult.OK
    assert verify(new_run, old, T0 + 1) is AuthResult.OK  # same slot, another nonce
    assert verify(new_run, old, T0 + 1) is AuthResult.COPY


def test_a_wrong_digest_on_a_nonce_not_ours_is_a_wrong_password() -> None:
    """stale=true only for the right digest: otherwise the answer would tell a
    guesser, without costing a counted failure, that the guess was right."""
    forger = DigestAuthenticator(REALM, b"another secret, 32 bytes long!!!", random_bytes=zeros)
    wrong = answer(forger, T0, password="a guess")
    right = answer(forger, T0)

    assert verify(make_auth(), wrong, T0 + 1) is AuthResult.WRONG_PASSWORD
    assert verify(make_auth(), right, T0 + 1) is AuthResult.BAD_NONCE


def test_reconfigure_changes_the_offer_and_keeps_the_nonces_issued() -> None:
    auth = make_auth(algorithms=("SHA-256", "MD5"))
    issued = answer(auth, T0, algorithm="MD5")

    auth.reconfigure(algorithms=("MD5",), nonce_lifetime_s=600)

    assert auth.offered_algorithms == ("MD5",)
    assert verify(auth, issued, T0 + 400) is AuthResult.OK  # past the old 300 s lifetime
    assert verify(auth, issued, T0 + 401) is AuthResult.COPY  # the ring was kept
    assert verify(auth, answer(auth, T0 + 1, algorithm="MD5"), T0 + 2) is AuthResult.OK
    with pytest.raises(ValueError):
        auth.reconfigure(algorithms=(), nonce_lifetime_s=300)


def test_nonces_of_an_earlier_run_under_the_same_secret_are_stale() -> None:
    """The replay ring is not kept across runs: counts used then are unknown now."""
    earlier = make_auth()
    used = answer(earlier, T0)
    assert verify(earlier, used, T0 + 1) is AuthResult.OK

    later = make_auth(issued_since=T0 + 10)
    for _ in range(3):
        later.challenges(T0 + 11)  # its counter passes the used nonce's

    assert verify(later, used, T0 + 12) is AuthResult.STALE
    assert verify(later, answer(later, T0 + 12), T0 + 13) is AuthResult.OK
