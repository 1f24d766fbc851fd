"""The registrar: REGISTER for the office's users (RFC 3261 §10.3).

Theory of operation
-------------------
`Registrar.handle_register(request, peer, now)` returns a `RegisterOutcome`:
the response to send, after how long (a slowed-down challenge), the binding
changes to persist, and any security event to log. It does no I/O.

1. The address is checked against the `AuthGuard`: a blocked address gets
   403 and nothing else is looked at.
2. Digest authentication (RFC 7616 / RFC 8760, `pbx.sip.digest`): without
   credentials for our realm the answer is 401 with one challenge per
   algorithm (SHA-256 first, then MD5, which SIPp and older phones need).
   An unknown user goes through exactly the same steps as a known one with
   a wrong password (a dummy HA1 is checked), so nothing tells them apart.
   The authenticated user must be the To user (§10.3 step 3), else 403.
3. Contacts are validated all together before anything changes (§10.3
   step 6: a REGISTER is processed atomically): ``*`` only alone and with
   ``Expires: 0``; each expiry from the contact's ``expires`` parameter,
   else the Expires header, else the default; a non-zero expiry below the
   minimum is refused with 423 and Min-Expires, one above the maximum is
   cut down. The location service then applies them all or none, with the
   Call-ID/CSeq ordering rule of step 7 and the per-user and global bounds.
4. The 200 lists every current binding of the user with its remaining time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

from pbx.core.guard import AuthGuard
from pbx.core.location import Binding, LocationService, UpdateResult, UpdateStatus
from pbx.sip.digest import AuthResult, Credentials, DigestAuthenticator
from pbx.sip.errors import SipParseError
from pbx.sip.headers import NameAddr
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.uri import SipUri

HA1Lookup = Callable[[str, str], str | None]
"""(extension, algorithm) -> the user's HA1 for our realm, or None if no such user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarSettings:
    min_expires_s: int = 60
    max_expires_s: int = 3600
    default_expires_s: int = 3600
    max_contacts_per_user: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityEvent:
    """A failed or refused authentication, for the security log."""

    kind: str  # "auth-failure", "blocked", "forbidden-user"
    address: str
    user: str
    detail: str


@dataclass(slots=True, kw_only=True)
class RegisterOutcome:
    response: Response
    delay_s: float = 0.0
    changes: UpdateResult | None = None
    """Binding changes for the store (`BindingWriter.record_result`)."""
    security_event: SecurityEvent | None = None
    authenticated_user: str | None = None


class Registrar:
    def __init__(
        self,
        *,
        domain: str,
        ha1_lookup: HA1Lookup,
        location: LocationService,
        authenticator: DigestAuthenticator,
        guard: AuthGuard,
        settings: RegistrarSettings = RegistrarSettings(),
        make_tag: Callable[[], str],
    ) -> None:
        self.domain = domain
        self.ha1_lookup = ha1_lookup
        self.location = location
        self.authenticator = authenticator
        self.guard = guard
        self.settings = settings
        self.make_tag = make_tag

    # ------------------------------------------------------------ entry point

    def handle_register(self, request: Request, peer: Peer, now: float) -> RegisterOutcome:
        verdict = self.guard.check(peer.host, now)
        to_user = _user_of(request.to_addr)
        if verdict.blocked:
            return RegisterOutcome(
                response=self._respond(request, 403, "Too many failed attempts"),
                security_event=SecurityEvent(kind="blocked", address=peer.host,
                                             user=to_user or "", detail="refused in cool-down"),
            )
        auth = self._authenticate(request, peer, now, to_user)
        if isinstance(auth, RegisterOutcome):
            if auth.security_event is None and verdict.delay_s:
                auth.delay_s = verdict.delay_s
            return auth
        self.guard.record_success(peer.host)
        try:
            outcome = self._update_bindings(request, peer, now, auth)
        except SipParseError as error:
            outcome = RegisterOutcome(response=self._respond(request, error.status, error.reason))
        outcome.authenticated_user = auth
        return outcome

    # ------------------------------------------------------- authentication

    def _authenticate(
        self, request: Request, peer: Peer, now: float, to_user: str | None
    ) -> str | RegisterOutcome:
        """The authenticated extension, or the outcome that answers the request."""
        credentials = self._our_credentials(request)
        if credentials is None:
            return self._challenge(request, stale=False, now=now, user=to_user)
        user = credentials.username
        ha1 = self.ha1_lookup(user, credentials.algorithm)
        result = self.authenticator.verify(credentials, request.method, ha1=ha1, now=now)
        if result is AuthResult.STALE:
            return self._challenge(request, stale=True, now=now, user=to_user)
        if result is not AuthResult.OK:
            verdict = self.guard.record_failure(peer.host, now)
            outcome = self._challenge(request, stale=False, now=now, user=to_user)
            outcome.delay_s = verdict.delay_s
            outcome.security_event = SecurityEvent(
                kind="blocked" if verdict.blocked else "auth-failure",
                address=peer.host, user=user, detail=result.name.lower())
            return outcome
        if to_user != user:
            # §10.3 step 3: this user may not change another user's bindings.
            return RegisterOutcome(
                response=self._respond(request, 403, "Not allowed to register this user"),
                security_event=SecurityEvent(kind="forbidden-user", address=peer.host,
                                             user=user, detail=f"tried to register {to_user}"),
            )
        return user

    def _our_credentials(self, request: Request) -> Credentials | None:
        """The Authorization for our realm, if any (a phone may send several)."""
        for value in request.headers.get_all("authorization"):
            credentials = Credentials.parse(value)  # SipParseError: answered 400
            if credentials.realm == self.domain:
                return credentials
        return None

    def _challenge(
        self, request: Request, *, stale: bool, now: float, user: str | None
    ) -> RegisterOutcome:
        """401 with one challenge per algorithm the user's stored secret can answer.

        A user configured with only an MD5 HA1 cannot be checked against a
        SHA-256 answer, so is offered MD5 alone; an unknown user is offered
        everything, exactly like a user configured with a password.
        """
        challenges = self.authenticator.challenges(now, stale=stale)
        if user is not None:
            usable = [c for c in challenges if self.ha1_lookup(user, c.algorithm) is not None]
            challenges = usable or challenges
        headers = [("WWW-Authenticate", challenge.to_header_value()) for challenge in challenges]
        return RegisterOutcome(response=self._respond(request, 401, headers=headers))

    # ------------------------------------------------------------ bindings

    def _update_bindings(
        self, request: Request, peer: Peer, now: float, user: str
    ) -> RegisterOutcome:
        contacts = request.contacts
        header_expires = request.expires
        call_id = request.call_id
        cseq = request.cseq.number
        if not contacts:
            # A query (§10.3 step 8 with no Contact): the 200 lists the bindings.
            return RegisterOutcome(response=self._ok(request, user, now))
        if any(contact.is_star for contact in contacts):
            if len(contacts) != 1 or header_expires != 0:
                raise SipParseError("Contact: * needs Expires: 0 and no other Contact")
            return self._finish(request, user, now,
                                self.location.remove_all(user, call_id, cseq, now))
        user_agent = request.headers.get("user-agent")
        bindings: list[Binding] = []
        for contact in contacts:
            expires = contact.expires
            if expires is None:
                expires = header_expires
            if expires is None:
                expires = self.settings.default_expires_s
            if 0 < expires < self.settings.min_expires_s:
                return RegisterOutcome(response=self._respond(
                    request, 423, headers=[("Min-Expires", str(self.settings.min_expires_s))]))
            expires = min(expires, self.settings.max_expires_s)
            contact.uri  # noqa: B018 - a malformed contact is a 400 before anything changes
            bindings.append(Binding(
                aor=user, contact=contact.uri_text, expires_at=now + expires, q=contact.q,
                call_id=call_id, cseq=cseq, transport=peer.transport,
                source_host=peer.host, source_port=peer.port,
                connection_id=peer.connection_id,
                instance_id=contact.param("+sip.instance"),
                reg_id=_int_or_none(contact.param("reg-id")),
                user_agent=user_agent, updated_at=now,
            ))
        # All or nothing (§10.3 step 6); expires_at == now removes a binding.
        return self._finish(request, user, now, self.location.update_all(bindings, now))

    def _finish(
        self, request: Request, user: str, now: float, result: UpdateResult
    ) -> RegisterOutcome:
        status = result.status
        if status is UpdateStatus.OK:
            return RegisterOutcome(response=self._ok(request, user, now), changes=result)
        if status is UpdateStatus.OUT_OF_ORDER:
            # §10.3 step 7 leaves the code open; 500 is what registrars answer.
            response = self._respond(request, 500, "Out of order CSeq for this registration")
        elif status is UpdateStatus.TOO_MANY_CONTACTS:
            response = self._respond(
                request, 403, f"More than {self.settings.max_contacts_per_user} contacts")
        elif status is UpdateStatus.TABLE_FULL:
            response = self._respond(request, 503, "Registration table full",
                                     headers=[("Retry-After", "60")])
        else:
            assert_never(status)
        return RegisterOutcome(response=response)

    def _ok(self, request: Request, user: str, now: float) -> Response:
        headers = []
        for binding in self.location.bindings(user, now):
            remaining = max(0, int(binding.expires_at - now + 0.5))
            headers.append(("Contact", f"<{binding.contact}>;expires={remaining}"))
        return self._respond(request, 200, headers=headers)

    def _respond(
        self, request: Request, status: int, reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        return make_response(request, status, reason, to_tag=self.make_tag(),
                             headers=headers or ())


def _user_of(address: NameAddr) -> str | None:
    try:
        uri = address.uri
    except SipParseError:
        return None
    return uri.user if isinstance(uri, SipUri) else None


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None
