"""Digest authentication of requests, for the registrar (401) and for calls (407).

Theory of operation
-------------------
`RequestAuthenticator.authenticate` returns the authenticated user name or
a `Denied` holding the response to send:

1. An address the `AuthGuard` has blocked gets 403 and nothing else.
2. No credentials for our realm: 401/407 with one challenge per algorithm
   offered (`offer`): those enabled that the claimed user's stored secret
   can answer (a user configured with only an MD5 HA1 is offered MD5
   alone; an unknown user is offered what a user with a password is, so
   that nothing tells them apart), SHA-256 first then MD5 (RFC 8760 §2.4),
   narrowed to MD5 alone for a phone whose User-Agent is not known to take
   SHA-256 (``sha256_user_agents``): many phones read only the first
   challenge, and some give up on a 401 that carries SHA-256 at all.
3. Credentials that fail get a fresh challenge, and a `SecurityEvent`
   saying which failure it was, for the security log:

   - ``wrong-password``: a wrong digest from a configured user. The only
     guess: counted against the address in the guard (answered late once
     it has failed often, refused once it has failed too often), and what
     fail2ban should count (docs/security-log.md).
   - ``unknown-user``: a user not configured (or disabled), e.g. a
     removed user's phone retrying. Slows the address down like a guess,
     so that the answers on the wire stay the same as for a wrong password
     until the guard blocks, but never blocks it, and is reported once per
     address and user per failure window.
   - ``stale-nonce``: the right digest on a nonce we cannot vouch for
     (one from before a restart under another nonce secret): answered
     ``stale=true`` (RFC 7616 §3.3), so the phone retries at once without
     asking its user; reported once per address and user per window.
   - ``unsupported``: credentials we cannot check (an algorithm not
     enabled, auth-int); reported once per address and user per window.

   A nonce past its lifetime with the right digest is routine (every
   phone meets it at a refresh): answered ``stale=true``, not reported.
4. A right digest on a nonce count already used (RFC 7616 §3.4) is no
   guess and is never charged to the address. With the very count last
   accepted for its nonce it is a copy of the request that used it; a
   caller that passes ``accept_copy`` may take it as authenticated. The
   registrar does: it answers REGISTERs statelessly, so a phone's
   retransmission can arrive after the transaction layer forgot the
   answer, and the registrar answers it with the current bindings,
   changing nothing. Any other replay gets a fresh challenge. Charging
   those would let a retransmission storm through an office's NAT lock
   out all its phones.

Which headers carry what is the `AuthScheme`: a registrar is the target of
its REGISTER (401, WWW-Authenticate / Authorization, RFC 3261 §22.2); for a
call the PBX acts for the callee's domain like a proxy (407,
Proxy-Authenticate / Proxy-Authorization, §22.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pbx.core.guard import AuthGuard
from pbx.sip.digest import Credentials
from pbx.sip.digest_server import AuthResult, DigestAuthenticator
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.transaction import stateless_tag

HA1Lookup = Callable[[str, str], str | None]
"""(user, algorithm) -> the user's HA1 for our realm, or None if no such user."""


@dataclass(frozen=True, slots=True)
class AuthScheme:
    status: int
    challenge_header: str
    credentials_header: str


WWW_AUTH = AuthScheme(401, "WWW-Authenticate", "Authorization")
PROXY_AUTH = AuthScheme(407, "Proxy-Authenticate", "Proxy-Authorization")

STRONGEST_FIRST: Final = ("SHA-256", "MD5")
"""The order challenges are offered in (RFC 8760 §2.4: most preferred first)."""
EVERY_USER_AGENT: Final = "*"
"""In ``sha256_user_agents``: every phone is offered SHA-256."""
_USER_AGENTS_REMEMBERED: Final = 1024
"""User-Agent texts whose SHA-256 verdict is kept: an office has a few models."""


def strongest_first(algorithms: Sequence[str]) -> tuple[str, ...]:
    """The enabled algorithms in the order they are offered."""
    return tuple(sorted(algorithms, key=lambda name: (
        STRONGEST_FIRST.index(name) if name in STRONGEST_FIRST else len(STRONGEST_FIRST))))


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityEvent:
    """A failed or refused authentication, for the security log."""

    kind: str  # "wrong-password", "blocked", "unknown-user", "stale-nonce", ...
    address: str
    user: str
    detail: str


@dataclass(slots=True, kw_only=True, init=False)
class Denied:
    """The answer to a request that is not (yet) authenticated."""

    response: Response
    delay_s: float = 0.0
    security_event: SecurityEvent | None = None
    stateless: bool = False
    """A plain challenge (no credentials, or a stale nonce): as good when sent again,
    so the endpoint answers it without keeping a transaction (RFC 3261 §8.2.7)."""

    def __init__(  # written out, not generated: see pbx.compiled
        self, *, response: Response, delay_s: float = 0.0,
        security_event: SecurityEvent | None = None, stateless: bool = False,
    ) -> None:
        self.response = response
        self.delay_s = delay_s
        self.security_event = security_event
        self.stateless = stateless


class RequestAuthenticator:
    def __init__(
        self,
        *,
        domain: str,
        ha1_lookup: HA1Lookup,
        authenticator: DigestAuthenticator,
        guard: AuthGuard,
        make_tag: Callable[[], str],
        user_name: Callable[[str], str] | None = None,
        has_ha1: Callable[[str, str], bool] | None = None,
        sha256_user_agents: Sequence[str] = (EVERY_USER_AGENT,),
    ) -> None:
        self.domain = domain
        self.ha1_lookup = ha1_lookup
        # The configured spelling of an authenticated user name: the very str
        # the config holds, so that the bindings (and calls) of 100,000 users
        # share the config's strings rather than each keeping a copy (~55 bytes).
        self.user_name = user_name if user_name is not None else str
        # Whether `ha1_lookup` would find an HA1, without working it out: a
        # challenge offers only the algorithms the user can be checked with,
        # and hashing two HA1s to learn that cost every challenge two hashes.
        self.has_ha1 = has_ha1 if has_ha1 is not None else (
            lambda user, algorithm: ha1_lookup(user, algorithm) is not None)
        self.authenticator = authenticator
        self.guard = guard
        self.make_tag = make_tag
        self._sha256_everyone = False
        self._sha256_patterns: tuple[str, ...] = ()
        self._takes_sha256: dict[str, bool] = {}
        self.set_sha256_user_agents(sha256_user_agents)

    def set_sha256_user_agents(self, patterns: Sequence[str]) -> None:
        """Which phones are offered SHA-256 (``[registrar] sha256_user_agents``)."""
        self._sha256_everyone = EVERY_USER_AGENT in patterns
        self._sha256_patterns = tuple(p.lower() for p in patterns if p != EVERY_USER_AGENT)
        self._takes_sha256 = {}

    def offer(self, request: Request, user: str | None) -> list[str]:
        """The algorithms to challenge `request` with, in order (point 2 above)."""
        enabled = self.authenticator.offered_algorithms
        offered = list(enabled)
        if user is not None:
            offered = [name for name in enabled if self.has_ha1(user, name)] or offered
        if len(offered) > 1 and "MD5" in offered and not self._sha256_capable(request):
            return ["MD5"]
        return offered

    def _sha256_capable(self, request: Request) -> bool:
        if self._sha256_everyone:
            return True
        if not self._sha256_patterns:
            return False
        user_agent = request.headers.get("user-agent")
        if user_agent is None:
            return False
        known = self._takes_sha256.get(user_agent)
        if known is None:
            lowered = user_agent.lower()
            known = any(pattern in lowered for pattern in self._sha256_patterns)
            if len(self._takes_sha256) < _USER_AGENTS_REMEMBERED:
                self._takes_sha256[user_agent] = known
        return known

    def authenticate(
        self, request: Request, peer: Peer, now: float, *, scheme: AuthScheme,
        claimed_user: str | None, accept_copy: Callable[[str], bool] | None = None,
    ) -> str | Denied:
        """The authenticated user, or how to answer. May raise SipParseError (400).

        ``accept_copy(user)`` is asked only of a right digest with the nonce
        count last accepted for its nonce (`AuthResult.COPY`: a copy of the
        request that used it, point 4 above): if it says yes, the user is
        returned as for fresh credentials, and the caller, told so, must
        answer the copy without acting on it again.
        """
        verdict = self.guard.check(peer.host, now)
        if verdict.blocked:
            # Logged once, when the block began: a blocked address sending at
            # packet rate must not write the security log at packet rate.
            return self._refused(request)
        credentials = self._our_credentials(request, scheme)
        if credentials is None:
            return self._challenge(request, scheme, now, claimed_user, stale=False,
                                   delay_s=verdict.delay_s, stateless=True)
        user = credentials.username
        ha1 = self.ha1_lookup(user, credentials.algorithm)
        result = self.authenticator.verify(credentials, request.method, ha1=ha1, now=now)
        if result is AuthResult.COPY and accept_copy is not None:
            name = self.user_name(user)
            if accept_copy(name):
                return name
        if result is AuthResult.BAD_NONCE:
            # The right digest on a nonce this run cannot vouch for: a phone
            # still holding one from before a restart. Stale, not a guess.
            denied = self._challenge(request, scheme, now, claimed_user, stale=True,
                                     delay_s=verdict.delay_s, stateless=True)
            denied.security_event = self._once_per_window(
                "stale-nonce", peer.host, user, now,
                "right digest on a nonce not issued since the last restart; "
                "answered stale=true")
            return denied
        if (result is AuthResult.STALE or result is AuthResult.COPY
                or result is AuthResult.REPLAY):
            # A stale nonce asks the phone to retry with a new one (stale=true).
            # A right digest on a nonce count used before is a late copy of a
            # request, or a captured one sent again. None of them is a guess,
            # so none is charged to the address: under overload an office's
            # phones retransmit by the thousand through one NAT address, and
            # counting those would lock all of them out.
            return self._challenge(request, scheme, now, claimed_user,
                                   stale=result is AuthResult.STALE,
                                   delay_s=verdict.delay_s, stateless=True)
        if result is not AuthResult.OK:
            return self._failed(request, peer, now, scheme, claimed_user, result, user,
                                has_ha1=ha1 is not None)
        self.guard.record_success(peer.host)
        return self.user_name(user)

    def _failed(
        self, request: Request, peer: Peer, now: float, scheme: AuthScheme,
        claimed_user: str | None, result: AuthResult, user: str, *, has_ha1: bool,
    ) -> Denied:
        """Credentials that failed: a fresh challenge, and what to report (point 3).

        ``has_ha1``: the user exists and has a secret for the credentials' algorithm.
        """
        if result is AuthResult.WRONG_PASSWORD and has_ha1:
            failure = self.guard.record_failure(peer.host, now)
            limit = self.guard.settings.max_failures
            window = self.guard.settings.failure_window_s
            if failure.blocked:
                refused = self._refused(request)
                refused.security_event = SecurityEvent(
                    kind="blocked", address=peer.host, user=user,
                    detail=f"{limit} wrong passwords within {window:g} s; refused until "
                           f"{failure.blocked_until:.0f}")
                return refused
            denied = self._challenge(request, scheme, now, claimed_user, stale=False,
                                     delay_s=failure.delay_s)
            denied.security_event = SecurityEvent(
                kind="wrong-password", address=peer.host, user=user,
                detail=f"failure {failure.failures} of {limit} within {window:g} s")
            return denied
        if result is AuthResult.WRONG_PASSWORD and not self._exists(user):
            # Answered as a wrong password is (the same challenge, slowed down
            # alike) so that the wire never tells whether a user exists.
            miss = self.guard.record_miss(peer.host, now)
            denied = self._challenge(request, scheme, now, claimed_user, stale=False,
                                     delay_s=miss.delay_s)
            denied.security_event = self._once_per_window(
                "unknown-user", peer.host, user, now,
                "no such user, or disabled; not counted as guessing")
            return denied
        denied = self._challenge(request, scheme, now, claimed_user, stale=False,
                                 delay_s=self.guard.check(peer.host, now).delay_s)
        denied.security_event = self._once_per_window(
            "unsupported", peer.host, user, now,
            "credentials that cannot be checked: an algorithm not enabled or with no "
            f"secret stored for this user, or a qop not offered; offered "
            f"{', '.join(self.offer(request, claimed_user))}")
        return denied

    def _exists(self, user: str) -> bool:
        return any(self.has_ha1(user, name) for name in STRONGEST_FIRST)

    def _once_per_window(self, kind: str, address: str, user: str, now: float,
                         detail: str) -> SecurityEvent | None:
        """An event that is no guess, reported once per address and user per window."""
        if not self.guard.first_report(kind, address, user, now):
            return None
        return SecurityEvent(kind=kind, address=address, user=user, detail=detail)

    def _our_credentials(self, request: Request, scheme: AuthScheme) -> Credentials | None:
        """The credentials for our realm, if any (a phone may send several)."""
        for value in request.headers.get_all(scheme.credentials_header):
            credentials = Credentials.parse(value)  # SipParseError: answered 400
            if credentials.realm == self.domain:
                return credentials
        return None

    def _challenge(
        self, request: Request, scheme: AuthScheme, now: float, user: str | None, *,
        stale: bool, delay_s: float, stateless: bool = False,
    ) -> Denied:
        """401/407 with a fresh challenge; ``stateless`` for one as good when sent again."""
        values = self.authenticator.challenge_values(now, stale=stale,
                                                     algorithms=self.offer(request, user))
        headers = [(scheme.challenge_header, value) for value in values]
        # The same To tag for every retransmission, should one be answered again (§8.2.7).
        response = make_response(request, scheme.status, to_tag=stateless_tag(request),
                                 headers=headers)
        return Denied(response=response, delay_s=delay_s, stateless=stateless)

    def _refused(self, request: Request) -> Denied:
        """403 to an address the guard has blocked, answered statelessly.

        As good when sent again as a challenge: kept in a transaction, an
        INVITE's 403 would be re-sent eleven times over 32 s to an address
        that is, by then, most likely sending at packet rate.
        """
        response = make_response(request, 403, "Too many failed attempts",
                                 to_tag=stateless_tag(request))
        return Denied(response=response, stateless=True)

    def respond(
        self, request: Request, status: int, reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        return make_response(request, status, reason, to_tag=self.make_tag(),
                             headers=headers or ())
