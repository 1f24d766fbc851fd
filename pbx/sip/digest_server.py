"""SIP digest authentication, the server side: nonces and checking credentials.

`DigestAuthenticator` issues the challenges of one realm and verifies the
credentials that answer them (RFC 3261 §22, RFC 7616 / RFC 8760). The
header grammar (`Challenge`, `Credentials`) and the digest maths it shares
with the client are `pbx.sip.digest`. Sans-I/O like the rest of `pbx.sip`:
time arrives as ``now``, randomness through an injected ``random_bytes``,
nothing is logged.

Theory of operation
-------------------

Nonces are stateless. A nonce is base64url of::

    created (8, IEEE double) | counter (4) | random (8) | MAC (16)

where the MAC (keyed BLAKE2b, its key derived from the authenticator's
secret) covers the first 20 bytes and the realm. Verifying one costs a
base64 decode and one MAC; no table lookup is needed to know that we issued
it and when. (As a shortcut, the last thousand nonces issued are kept by
their text: the answer to a fresh challenge finds its nonce there and skips
the decode and the MAC. A nonce not there is checked as above.)

A nonce older than ``nonce_lifetime_s`` is STALE, and one whose MAC fails
(issued before a restart under another secret, or made up) BAD_NONCE; both
are reported only when the digest was right (RFC 7616 §3.3, ``stale``), so
that the phone retries with a new nonce without asking its user, and so
that the answer never tells a guesser more than a wrong password would: a
wrong digest is WRONG_PASSWORD whatever the nonce. The digest is computed
over the nonce's text, so it can be checked on a nonce we cannot vouch for.

Besides that shortcut, the only state is the nonce-count table that stops replays (RFC 7616 §3.4,
``nc``): per nonce, the highest nc accepted, in a fixed ring of
``max_tracked_nonces`` slots (12 bytes each, allocated once). A nonce's
slot is its counter modulo the ring size, so a slot is handed on only to
a nonce issued a whole ring later; each slot records which nonce holds it
(a 64-bit fingerprint: its counter and half its random part) and its highest nc.
A nonce issued more than a ring ago may have lost its slot: it is answered
STALE (the phone retries at once with a fresh nonce), which closes the
replay window that forgetting would open. Only *successful* verification
writes a slot, so a flood of garbage costs CPU, never memory; and nothing
has to be swept, since a nonce past its lifetime is STALE whatever its
slot says. The ring was a dict of nonce bodies in first-use order, about
160 bytes a tracked nonce: 16 MB with 100,000 phones registered.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import random
import struct
from array import array
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable, Sequence
from enum import Enum
from hmac import compare_digest
from typing import Final, Protocol

from pbx.sip.digest import (
    Challenge,
    Credentials,
    UnsupportedDigestError,
    algorithm_named,
    compute_ha1,
    digest_response,
    quoted_string,
)
from pbx.sip.errors import LocalProtocolError

__all__ = [
    "DEFAULT_TRACKED_NONCES",
    "AuthResult",
    "DigestAuthenticator",
    "SecretHolder",
    "ha1_of",
    "has_ha1",
    "stored_ha1",
]


class AuthResult(Enum):
    """The outcome of `DigestAuthenticator.verify`, and what to answer.

    Everything but OK is answered 401 (407 for a proxy) with fresh
    `DigestAuthenticator.challenges`; STALE with ``stale=True``.
    """

    OK = "ok"
    """The digest is right and the nonce fresh and not replayed."""
    STALE = "stale"
    """Right digest, but the nonce expired: challenge again with stale=TRUE."""
    BAD_NONCE = "bad-nonce"
    """Right digest, on a nonce (or opaque) we did not issue under this secret and
    realm: most often one from before a restart. Answered like STALE."""
    WRONG_PASSWORD = "wrong-password"
    """Wrong digest, or unknown user: the two are deliberately one result."""
    COPY = "copy"
    """Right digest, with the very nc last accepted for the nonce: a copy of the
    request that used it (a retransmission, or that request captured and sent
    again). Refused like a replay unless the caller knows better: a registrar
    that answers statelessly answers such a copy as it did the first time."""
    REPLAY = "replay"
    """Right digest, but nc is below the highest nc seen for the nonce."""
    REALM_MISMATCH = "realm-mismatch"
    """Credentials for another realm (RFC 3261 §22.1)."""
    UNSUPPORTED = "unsupported"
    """An algorithm or qop not offered, e.g. auth-int, or no qop when refused."""


_NONCE_BODY = struct.Struct(">dI8s")  # created, counter, random
_NONCE_FIELDS = struct.Struct(">dII")
"""The body read back: created, counter and the first half of the random part."""

DEFAULT_TRACKED_NONCES: Final = 262_144
"""Slots of the replay ring: 3 MB, a nonce lifetime (300 s) of challenges at 870/s."""
_NONCE_MAC_BYTES = 16  # keyed BLAKE2b, 128 bits
_NONCE_BYTES = _NONCE_BODY.size + _NONCE_MAC_BYTES
_NONCE_CHARS = (_NONCE_BYTES * 4 + 2) // 3
_MIN_SECRET_BYTES = 16
_RECENT_NONCES: Final = 1024
"""Nonces remembered by their text, so that verifying one skips decoding and MAC."""


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(raw: bytes) -> str:
    """base64url without padding; binascii directly (base64's wrappers are
    Python functions, a few microseconds a call on every challenge). A nonce
    and the opaque are whole base64 quanta: nothing to strip."""
    encoded = b2a_base64(raw, newline=False).translate(_TO_URLSAFE)
    if len(raw) % 3:
        encoded = encoded.rstrip(b"=")
    return encoded.decode("ascii")


class _RandomBytes:
    """`random.Random.randbytes`, taken in blocks: one call into C per 4 KB, not per nonce."""

    def __init__(self, source: random.Random) -> None:
        self._source = source
        self._block = b""
        self._at = 0

    def __call__(self, count: int) -> bytes:
        at = self._at
        if at + count > len(self._block):
            self._block = self._source.randbytes(max(4096, count))
            at = 0
        self._at = at + count
        return self._block[at : at + count]


class DigestAuthenticator:
    """Issues challenges and verifies credentials for one realm, sans-I/O.

    The caller looks the user up and passes HA1 for the credentials'
    algorithm (see `ha1_for`), or None for an unknown user; the password
    store is not this object's business. ``secret`` keys the nonce MAC: keep
    it across restarts (with a wall clock for ``now``) if nonces must survive
    them, otherwise a restart turns outstanding nonces into BAD_NONCE and
    phones simply authenticate again (answered ``stale=true``). A secret kept
    across runs needs ``issued_since``, the time this run began: the replay
    ring is not kept, so the nonces of an earlier run are refused as STALE
    rather than counted afresh.

    With ``allow_no_qop`` (the default, for old phones), credentials without
    qop (RFC 2069) are accepted; they carry no nonce-count, so nothing but
    the nonce lifetime limits their replay.

    `verify` does not compare the credentials' ``uri`` with the
    Request-URI (RFC 2617 §3.2.2.5): that needs SIP URI equality, which
    belongs to the caller.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_lifetime_s: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_tracked_nonces: int = DEFAULT_TRACKED_NONCES,
        allow_no_qop: bool = True,
        random_bytes: Callable[[int], bytes] | None = None,
        issued_since: float | None = None,
    ) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")
        if not nonce_lifetime_s > 0:
            raise ValueError("nonce_lifetime_s must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        self._realm = realm
        self._realm_bytes = realm.encode("utf-8", "surrogateescape")
        self._secret = secret
        self._set_algorithms(algorithms, nonce_lifetime_s)
        self._max_tracked = max_tracked_nonces
        self._allow_no_qop = allow_no_qop
        # Nonces made before this time were made by an earlier run under the
        # same secret: their counts are not in this run's replay ring, so a
        # request captured then could be replayed now. They are STALE.
        self._issued_since = float("-inf") if issued_since is None else issued_since
        # Nonces must be unique and unforgeable (the counter and the MAC see
        # to that), not secret: a PRNG seeded once from the OS saves a system
        # call per challenge.
        self._random_bytes = (random_bytes if random_bytes is not None
                              else _RandomBytes(random.Random(os.urandom(32))))
        # The nonce MAC: keyed BLAKE2b is one call into C and a few times
        # cheaper than HMAC-SHA-256, and every REGISTER makes or checks a nonce.
        mac_key = hashlib.blake2b(b"pbx nonce key\x00" + secret).digest()
        # Keyed once: a keyed BLAKE2b hashes its key as a first block, and a
        # copy of this state skips that block and the keyword parsing.
        self._mac_state = hashlib.blake2b(key=mac_key, digest_size=_NONCE_MAC_BYTES)
        self._counter = 0
        mac = hmac.digest(secret, b"opaque\x00" + self._realm_bytes, "sha256")
        self._opaque = _b64(mac[:12])
        # The fixed parts of every challenge, in `Challenge.to_header_value`'s order.
        opaque = quoted_string(self._opaque)
        self._challenge_prefix = f"Digest realm={quoted_string(realm)}, nonce=\""
        self._challenge_tail = f", opaque={opaque}, algorithm="
        self._challenge_tail_stale = f", opaque={opaque}, stale=TRUE, algorithm="
        # The replay ring: per slot, the fingerprint of the nonce holding it
        # (0: none yet) and the highest nc accepted for it.
        self._holder = array("Q", bytes(8 * max_tracked_nonces))
        self._highest_nc = array("I", bytes(4 * max_tracked_nonces))  # nc < 2**32
        self._in_use = 0
        # The last `_RECENT_NONCES` nonces issued, text to body, and the ring
        # of their texts that bounds them (about 200 KB). A phone answers a
        # challenge within milliseconds, so its nonce is nearly always here,
        # and a nonce found here is one we issued: the body is known without
        # base64 decoding and without a MAC (what they cost: docs/benchmarks.md,
        # "Why the hot path is written as it is").
        # Any other nonce (older, from before a restart, a flood having
        # pushed it out, or forged) is checked by its MAC as before.
        self._recent: dict[str, bytes] = {}
        self._recent_ring = [""] * _RECENT_NONCES
        self._recent_at = 0

    def reconfigure(self, *, algorithms: Sequence[str], nonce_lifetime_s: float) -> None:
        """Change the algorithms and the nonce lifetime in place (a config reload).

        The secret, the nonce counter and the replay ring stay: every nonce
        issued so far keeps verifying as before, so phones in the middle of
        authenticating are not sent round again.
        """
        if not nonce_lifetime_s > 0:
            raise ValueError("nonce_lifetime_s must be positive")
        self._set_algorithms(algorithms, nonce_lifetime_s)

    def _set_algorithms(self, names: Sequence[str], nonce_lifetime_s: float) -> None:
        if not names:
            raise ValueError("at least one algorithm is needed")
        try:
            algs = [algorithm_named(a) for a in names]
        except UnsupportedDigestError as e:
            raise ValueError(str(e)) from None
        if len({a.name for a in algs}) != len(algs):
            raise ValueError("an algorithm is listed twice")
        self._lifetime_s = nonce_lifetime_s
        self._algorithms = {a.name.upper(): a for a in algs}
        self._offered = tuple(a.name for a in algs)
        self._algorithms_as_named = {a.name: a for a in algs}
        # A stand-in HA1 per hash, so an unknown user costs the same work.
        dummy = hmac.digest(self._secret, b"dummy\x00", "sha256")
        self._dummy_ha1 = {a.name: a.hexdigest(dummy) for a in algs}

    @property
    def nonce_lifetime_s(self) -> float:
        return self._lifetime_s

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def tracked_nonce_count(self) -> int:
        """Slots of the replay ring that hold a nonce (at most max_tracked_nonces)."""
        return self._in_use

    def challenges(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, most preferred first (RFC 8760 §2.3-2.4).

        Each becomes its own WWW-Authenticate header, in this order. They
        share one nonce and opaque, as in the RFC 7616 §3.9.1 example.
        """
        nonce = self._make_nonce(now)
        return [
            Challenge(
                realm=self._realm,
                nonce=nonce,
                algorithm=name,
                qop=("auth",),
                opaque=self._opaque,
                stale=stale,
            )
            for name in self._offered
        ]

    @property
    def offered_algorithms(self) -> tuple[str, ...]:
        """The algorithms challenged with, most preferred first."""
        return self._offered

    def challenge_values(self, now: float, *, stale: bool = False,
                         algorithms: Sequence[str] | None = None) -> list[str]:
        """The WWW-/Proxy-Authenticate values of `challenges`, formatted directly.

        The same text `Challenge.to_header_value` writes (a test holds them
        equal), without building the objects: a registrar sends one of these
        for every REGISTER. ``algorithms`` narrows the offer, keeping our order.
        """
        nonce = self._make_nonce(now)
        prefix = self._challenge_prefix
        tail = self._challenge_tail_stale if stale else self._challenge_tail
        return [f'{prefix}{nonce}"{tail}{name}, qop="auth"'
                for name in self._offered if algorithms is None or name in algorithms]

    def _make_nonce(self, now: float) -> str:
        rand = self._random_bytes(8)
        if len(rand) != 8:
            raise LocalProtocolError("random_bytes(8) returned a wrong length")
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        body = _NONCE_BODY.pack(now, self._counter, rand)
        nonce = _b64(body + self._mac(body))
        at = self._recent_at
        ring = self._recent_ring
        if ring[at]:
            # pop, not del: a nonce issued twice (the counter wrapped with the
            # same time and randomness) has two places in the ring.
            self._recent.pop(ring[at], None)
        ring[at] = nonce
        self._recent[nonce] = body
        self._recent_at = (at + 1) % _RECENT_NONCES
        return nonce

    def _mac(self, body: bytes) -> bytes:
        state = self._mac_state.copy()
        state.update(body + self._realm_bytes)
        return state.digest()

    def _nonce_body(self, nonce: str) -> bytes | None:
        """The authenticated body of a nonce we issued, else None."""
        body = self._recent.get(nonce)
        if body is not None:
            return body
        if len(nonce) != _NONCE_CHARS or not nonce.isascii():
            return None
        encoded = nonce.encode("ascii")
        if b"+" in encoded or b"/" in encoded:
            return None  # another spelling of the same bytes ("+" for "-")
        try:
            # A nonce is a whole number of base64 quanta (36 bytes): no padding,
            # no unused bits, so with only alphabet characters (strict mode)
            # every nonce has exactly one spelling.
            raw = a2b_base64(encoded.translate(_FROM_URLSAFE), strict_mode=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_BYTES:
            return None
        body = raw[: _NONCE_BODY.size]
        if not compare_digest(self._mac(body), raw[_NONCE_BODY.size :]):
            return None
        return body

    def verify(
        self, credentials: Credentials, method: str, *, ha1: str | None, now: float
    ) -> AuthResult:
        """Check credentials for a request (RFC 3261 §22.4, RFC 7616 §3.4.1-§3.4.3).

        Pass ``ha1=None`` for an unknown user: a stand-in HA1 is hashed and
        compared just the same, so the answer and the work match a wrong
        password. The nonce-count table changes only when the digest is right.
        """
        if credentials.realm != self._realm:
            return AuthResult.REALM_MISMATCH
        alg = self._algorithms_as_named.get(credentials.algorithm)  # as Credentials spell them
        if alg is None:
            alg = self._algorithms.get(credentials.algorithm.upper())
        if alg is None:
            return AuthResult.UNSUPPORTED
        qop = credentials.qop
        if qop is None:
            if not self._allow_no_qop or alg.session:
                return AuthResult.UNSUPPORTED
        elif qop != "auth" and qop.lower() != "auth":
            return AuthResult.UNSUPPORTED
        body = self._nonce_body(credentials.nonce)
        ours = body is not None and (credentials.opaque is None
                                     or credentials.opaque == self._opaque)

        # compute_response's checks are made above (qop) and by Credentials
        # (a qop comes with nc and cnonce; -sess without qop is refused above).
        expected = digest_response(
            alg, self._dummy_ha1[alg.name] if ha1 is None else ha1, credentials.nonce,
            method, credentials.uri, qop, credentials.nc, credentials.cnonce)
        given = credentials.response.lower().encode("ascii", "replace")
        matched = compare_digest(expected.encode("ascii"), given)
        if not matched or ha1 is None:
            return AuthResult.WRONG_PASSWORD
        if not ours or body is None:
            return AuthResult.BAD_NONCE

        created: float
        counter: int
        random_half: int
        created, counter, random_half = _NONCE_FIELDS.unpack_from(body)
        if now >= created + self._lifetime_s or now < created or created < self._issued_since:
            return AuthResult.STALE
        if qop is None:
            return AuthResult.OK
        assert credentials.nc is not None  # Credentials' invariant with qop
        # The counter tells apart nonces that share a slot in one run, the
        # random part nonces of different runs under the same secret.
        return self._count(counter, (counter << 32 | random_half) or 1,
                           int(credentials.nc, 16))

    def _count(self, counter: int, fingerprint: int, nc: int) -> AuthResult:
        """Accept `nc` only if above the last one seen (RFC 7616 §3.4 ``nc``)."""
        size = self._max_tracked
        slot = counter % size
        if self._holder[slot] == fingerprint:
            highest = self._highest_nc[slot]
            if nc <= highest:
                return AuthResult.COPY if nc == highest else AuthResult.REPLAY
            self._highest_nc[slot] = nc
            return AuthResult.OK
        if (self._counter - counter) & 0xFFFFFFFF >= size:
            # Issued a whole ring ago (or under an earlier run's counter): its
            # slot may have passed to another nonce, and with it its history.
            return AuthResult.STALE
        if nc < 1:
            return AuthResult.REPLAY
        # First use: the slot is empty or holds a nonce at least a ring older.
        if self._holder[slot] == 0:
            self._in_use += 1
        self._holder[slot] = fingerprint
        self._highest_nc[slot] = nc
        return AuthResult.OK


# --------------------------------------------------------------------------
# A user's stored secret: the HA1 the server checks credentials against
# --------------------------------------------------------------------------


class SecretHolder(Protocol):
    """What a user record offers the server (`pbx.config.UserConfig`); read-only.

    Credentials are a password, or hashes stored in its place (``ha1`` for
    MD5, ``ha1_sha256`` for SHA-256, RFC 7616 §3.4.2), computed for the
    realm in force.
    """

    @property
    def extension(self) -> str: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def password(self) -> str | None: ...

    @property
    def ha1(self) -> str | None: ...

    @property
    def ha1_sha256(self) -> str | None: ...


def stored_ha1(user: SecretHolder, algorithm: str) -> str | None:
    """The HA1 stored for `algorithm`; ValueError for an algorithm we cannot hash."""
    if algorithm == "MD5":
        return user.ha1
    if algorithm == "SHA-256":
        return user.ha1_sha256
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def ha1_of(user: SecretHolder, realm: str, algorithm: str) -> str | None:
    """H(extension:realm:password) for `algorithm`, else the stored HA1 or None.

    A password is hashed for `realm` on every call (not cached: a cache of two
    hashes for 100,000 users held some 40 MB, and a hash costs about a
    microsecond); a stored HA1 is returned for its own algorithm only.
    ``enabled`` is the caller's to check.
    """
    stored = stored_ha1(user, algorithm)  # refuses an unknown algorithm first
    password = user.password
    if password is not None:
        return compute_ha1(user.extension, realm, password, algorithm)
    return stored


def has_ha1(user: SecretHolder, algorithm: str) -> bool:
    """Whether `ha1_of` gives an HA1 (not None), without hashing."""
    return stored_ha1(user, algorithm) is not None or user.password is not None
