"""The registrar: REGISTER for the office's users (RFC 3261 §10.3).

Theory of operation
-------------------
`Registrar.handle_register(request, peer, now)` returns a `RegisterOutcome`:
the response to send, after how long (a slowed-down challenge), the binding
changes to persist, and any security event to log. It does no I/O.

1. Digest authentication with 401 (`pbx.core.auth`: the guard against
   guessing, challenges, stale nonces). The authenticated user must be the
   To user (§10.3 step 3), else 403.
2. Contacts are validated all together before anything changes (§10.3
   step 6: a REGISTER is processed atomically): ``*`` only alone and with
   ``Expires: 0``; each expiry from the contact's ``expires`` parameter,
   else the Expires header, else the default; a non-zero expiry below the
   minimum is refused with 423 and Min-Expires, one above the maximum is
   cut down. The location service then applies them all or none, with the
   Call-ID/CSeq ordering rule of step 7 and the per-user and global bounds.
3. The 200 lists every current binding of the user with its remaining time.

Every 200 is answered statelessly (RFC 3261 §8.2.7), as Kamailio's
registrar answers: the transaction layer echoes its bytes to
retransmissions for a few seconds only (``stateless_echo_s``) instead of
holding them for Timer J (32 s), which at thousands of REGISTERs a second
was most of the PBX's memory under load. A retransmission arriving after
that window repeats the nonce count its original used: the digest layer
calls it a copy (`AuthResult.COPY`), and the registrar answers it 200
with the current bindings without applying it again (through
``accept_copy`` of `RequestAuthenticator.authenticate`): not a failure,
not a second update, and cheap next to parsing a fresh registration.
Refusals (403, 423, 500, 503) keep their transaction: they are rare, and
a phone must see the same one again.

A 200 that reports changed bindings leaves only after the store has
committed them (the endpoint holds it for the group commit, `pbx.store`):
answered 200 means on disk. If that commit fails, the endpoint answers 503
with Retry-After instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from pbx.core.auth import WWW_AUTH, Denied, RequestAuthenticator, SecurityEvent
from pbx.core.location import Binding, LocationService, UpdateResult, UpdateStatus
from pbx.sip.errors import SipParseError
from pbx.sip.headers import NameAddr, Via
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.transaction import stateless_tag
from pbx.sip.uri import SipUri, has_param


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarSettings:
    min_expires_s: int = 60
    max_expires_s: int = 3600
    default_expires_s: int = 3600
    max_contacts_per_user: int = 10


@dataclass(slots=True, kw_only=True, init=False)
class RegisterOutcome:
    response: Response
    delay_s: float = 0.0
    changes: UpdateResult | None = None
    """Binding changes for the store (`PendingBindings.record_result`). A 200 that
    carries them is sent only once they are committed (`pbx.store`, group commit);
    one without (a query, a copy) reports nothing new and goes at once."""
    security_event: SecurityEvent | None = None
    authenticated_user: str | None = None
    stateless: bool = False
    """Answer without a transaction: a plain challenge (`Denied.stateless`) or any 200."""

    def __init__(  # written out, not generated: see pbx.compiled
        self, *, response: Response, delay_s: float = 0.0, changes: UpdateResult | None = None,
        security_event: SecurityEvent | None = None, authenticated_user: str | None = None,
        stateless: bool = False,
    ) -> None:
        self.response = response
        self.delay_s = delay_s
        self.changes = changes
        self.security_event = security_event
        self.authenticated_user = authenticated_user
        self.stateless = stateless


class Registrar:
    def __init__(
        self,
        *,
        auth: RequestAuthenticator,
        location: LocationService,
        settings: RegistrarSettings = RegistrarSettings(),
    ) -> None:
        self.auth = auth
        self.location = location
        self.settings = settings
        self.domain = auth.domain

    # ------------------------------------------------------------ entry point

    def handle_register(self, request: Request, peer: Peer, now: float) -> RegisterOutcome:
        to_user = request.to_addr.sip_user
        copied = False

        def accept_copy(user: str) -> bool:
            nonlocal copied
            copied = True
            return True

        try:
            user = self.auth.authenticate(request, peer, now, scheme=WWW_AUTH,
                                          claimed_user=to_user, accept_copy=accept_copy)
            if isinstance(user, Denied):
                return RegisterOutcome(response=user.response, delay_s=user.delay_s,
                                       security_event=user.security_event,
                                       stateless=user.stateless)
            if to_user != user:
                # §10.3 step 3: this user may not change another user's bindings.
                return RegisterOutcome(
                    response=self._respond(request, 403, "Not allowed to register this user"),
                    security_event=SecurityEvent(kind="forbidden-user", address=peer.host,
                                                 user=user, detail=f"tried to register {to_user}"),
                )
            if copied:
                # A copy of the last REGISTER made with these credentials (a
                # retransmission the transaction layer no longer remembers):
                # the bindings as they are now, nothing applied again.
                outcome = RegisterOutcome(response=self._ok(request, user, now),
                                          stateless=True)
            else:
                outcome = self._update_bindings(request, peer, now, user)
        except SipParseError as error:
            return RegisterOutcome(response=self._respond(request, error.status, error.reason))
        outcome.authenticated_user = user
        return outcome

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
            return RegisterOutcome(response=self._ok(request, user, now), stateless=True)
        if any(contact.is_star for contact in contacts):
            if len(contacts) != 1 or header_expires != 0:
                raise SipParseError("Contact: * needs Expires: 0 and no other Contact")
            return self._finish(request, user, now,
                                self.location.remove_all(user, call_id, cseq, now))
        user_agent = request.headers.get("user-agent")
        # One answer for every contact: whether the phone reached us unNATed.
        sent_as_seen = peer.transport == "udp" and _sent_by_matches(request.top_via, peer)
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
                reachable_as_given=sent_as_seen and _reachable_as_given(contact, peer),
            ))
        # All or nothing (§10.3 step 6); expires_at == now removes a binding.
        return self._finish(request, user, now, self.location.update_all(bindings, now))

    def _finish(
        self, request: Request, user: str, now: float, result: UpdateResult
    ) -> RegisterOutcome:
        status = result.status
        if status is UpdateStatus.OK:
            return RegisterOutcome(response=self._ok(request, user, now), changes=result,
                                   stateless=True)
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
        # Answered statelessly: the To tag of every answer to this request is the same.
        return make_response(request, 200, to_tag=stateless_tag(request), headers=headers)

    def _respond(
        self, request: Request, status: int, reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        return self.auth.respond(request, status, reason, headers)


def _sent_by_matches(via: Via, peer: Peer) -> bool:
    """Whether the top Via's sent-by is the address the request came from.

    A phone writes its own idea of its address and port there; a NAT
    rewrites the packet's source but not the text. When both agree, the
    phone's own addresses (its contacts) mean the same from here as from
    where it stands. A name in the sent-by never equals the source's
    address, so it counts as a NAT: that is the safe side.
    """
    host = via.host
    if host.startswith("["):
        host = host[1:-1]
    return host == peer.host and (via.port or 5060) == peer.port


def _reachable_as_given(contact: NameAddr, peer: Peer) -> bool:
    """Whether requests may go to the contact's own address rather than the flow.

    Decided once per REGISTER over UDP whose Via matched its source
    (`_sent_by_matches`), so that a binding registered for another socket
    of the same host (RFC 3261 §10.2, a script registering an answering
    machine) is called there. Everything else uses the flow the REGISTER
    came in on, which is what reaches a phone behind NAT: a contact on
    another host (a private address, or a name this side cannot vouch
    for), a contact asking for RFC 5626 outbound (``ob``, or a ``reg-id``)
    or naming ``maddr``, a WebSocket contact (this side cannot open one).
    """
    uri = contact.uri
    if not isinstance(uri, SipUri):
        return False
    host = uri.host
    if host.startswith("["):
        host = host[1:-1]
    if host != peer.host:
        return False
    params = uri.params
    if params and (has_param(params, "ob") or has_param(params, "maddr")
                   or uri.transport not in (None, "udp", "tcp", "tls")):
        return False
    return contact.param("reg-id") is None


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None
