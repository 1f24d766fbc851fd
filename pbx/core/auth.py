"""Digest authentication of requests, for the registrar (401) and for calls (407).

Theory of operation
-------------------
`RequestAuthenticator.authenticate` returns the authenticated user name or
a `Denied` holding the response to send:

1. An address the `AuthGuard` has blocked gets 403 and nothing else.
2. No credentials for our realm: 401/407 with one challenge per algorithm
   the claimed user's stored secret can answer (SHA-256 first, then MD5,
   RFC 8760 §2.4; a user configured with only an MD5 HA1 is offered MD5
   alone; an unknown user is offered everything, like a user with a
   password, so that nothing tells them apart).
3. Credentials that fail (wrong password, unknown user, forged nonce)
   count against the address in the guard and get a fresh challenge, late
   once the address has failed often; a stale nonce gets a challenge with
   ``stale=true`` so the phone retries without asking its user.
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

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityEvent:
    """A failed or refused authentication, for the security log."""

    kind: str  # "auth-failure", "blocked", "forbidden-user"
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
            return Denied(response=self.respond(request, 403, "Too many failed attempts"))
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
            failure = self.guard.record_failure(peer.host, now)
            if failure.blocked:
                return Denied(
                    response=self.respond(request, 403, "Too many failed attempts"),
                    security_event=SecurityEvent(
                        kind="blocked", address=peer.host, user=user,
                        detail=f"{result.name.lower()}; refused until "
                               f"{failure.blocked_until:.0f}"))
            denied = self._challenge(request, scheme, now, claimed_user, stale=False,
                                     delay_s=failure.delay_s)
            denied.security_event = SecurityEvent(
                kind="auth-failure", address=peer.host, user=user, detail=result.name.lower())
            return denied
        self.guard.record_success(peer.host)
        return self.user_name(user)

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
        algorithms: list[str] | None = None
        if user is not None:
            algorithms = [name for name in self.authenticator.offered_algorithms
                          if self.has_ha1(user, name)] or None
        values = self.authenticator.challenge_values(now, stale=stale, algorithms=algorithms)
        headers = [(scheme.challenge_header, value) for value in values]
        # The same To tag for every retransmission, should one be answered again (§8.2.7).
        response = make_response(request, scheme.status, to_tag=stateless_tag(request),
                                 headers=headers)
        return Denied(response=response, delay_s=delay_s, stateless=stateless)

    def respond(
        self, request: Request, status: int, reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        return make_response(request, status, reason, to_tag=self.make_tag(),
                             headers=headers or ())
