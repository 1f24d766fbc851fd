"""What the digest tests share: one realm and secret, and a phone that answers challenges."""

from __future__ import annotations

from pbx.sip.digest import Challenge, Credentials, authorization_for, ha1_for
from pbx.sip.digest_server import AuthResult, DigestAuthenticator

REALM = "pbx.example.org"
SECRET = b"0123456789abcdef0123456789abcdef"
URI = "sip:pbx.example.org"
T0 = 1000.0


def zeros(n: int) -> bytes:
    """Deterministic stand-in for os.urandom: uniqueness must not rely on it."""
    return b"\x00" * n


def make_auth(**kwargs: object) -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET, random_bytes=zeros, **kwargs)  # type: ignore[arg-type]


def answer(
    auth: DigestAuthenticator,
    now: float,
    *,
    algorithm: str = "SHA-256",
    password: str = "secret",
    nc: int = 1,
) -> Credentials:
    """What a phone sends back to a new challenge for `algorithm` issued at `now`."""
    (challenge,) = [c for c in auth.challenges(now) if c.algorithm == algorithm]
    return respond(challenge, password=password, nc=nc)


def respond(challenge: Challenge, *, password: str = "secret", nc: int = 1) -> Credentials:
    """A phone's next request with the nonce of `challenge`."""
    return authorization_for(
        challenge,
        username="1001",
        password=password,
        method="REGISTER",
        uri=URI,
        cnonce="0a4f113b",
        nc=nc,
    )


def good_ha1(algorithm: str = "SHA-256") -> str:
    return ha1_for("1001", REALM, "secret", algorithm)


def verify(auth: DigestAuthenticator, creds: Credentials, now: float) -> AuthResult:
    return auth.verify(creds, "REGISTER", ha1=good_ha1(creds.algorithm), now=now)
