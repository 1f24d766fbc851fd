"""Requests outside any dialog to a user's registered phones (MESSAGE, unsolicited NOTIFY).

`Outbound.send_to_user` sends one request per binding of the user, each to
where that binding says to reach the phone (`Binding.target`: the flow its
REGISTER came over, through its NAT, unless the registrar judged the
contact reachable as written), with the binding's contact as the
Request-URI (RFC 3261 §10.3 says the request goes to the contact). Each is
a transaction of its own (a new Call-ID, CSeq 1) and its answer is one
`Delivery`; together they fire once every phone has answered, timed out
(408) or could not be reached (503).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed

from pbx.core.location import Binding
from pbx.core.outcomes import WaitingOwner
from pbx.core.plugin_messages import RequestSender, headers_with_type
from pbx.dialplan import Delivery, Outcome
from pbx.sip.errors import SipParseError
from pbx.sip.message import build_request
from pbx.sip.uri import parse_request_uri

NEEDS_CONTACT = frozenset({"NOTIFY", "SUBSCRIBE", "REFER", "INVITE", "UPDATE"})
"""Methods whose requests carry our Contact (RFC 6665 §8.2.1 for NOTIFY: it may make
a dialog); MESSAGE and the like go without one."""


class Bindings(Protocol):
    """The location service's read side (`pbx.core.location.LocationService`)."""

    def bindings(self, aor: str, now: float) -> list[Binding]: ...


class Outbound:
    """`pbx.dialplan.OutboundService` on the core's sending and location service."""

    def __init__(self, *, sender: RequestSender, location: Bindings) -> None:
        self.sender = sender
        self.location = location

    def send_to_user(self, user: str, method: str, *,
                     headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                     content_type: str | None = None,
                     from_user: str | None = None) -> Deferred[list[Delivery]]:
        bindings = self.location.bindings(user, self.sender.now())
        if not bindings:
            return succeed([])
        extra = headers_with_type(headers, body, content_type)
        sending = [self._send_one(binding, user, method.upper(), extra, body, from_user)
                   for binding in bindings]
        done: Deferred[list[Delivery]] = gatherResults(sending)
        return done

    def _send_one(self, binding: Binding, user: str, method: str,
                  headers: list[tuple[str, str]], body: bytes,
                  from_user: str | None) -> Deferred[Delivery]:
        sender = self.sender
        contact = binding.contact
        owner = WaitingOwner()

        def delivered(outcome: Outcome) -> Delivery:
            return Delivery(contact, outcome.status, outcome.reason)

        delivery = owner.result.addCallback(delivered)
        try:
            uri = parse_request_uri(contact)
        except SipParseError:
            # Registered, so it parsed then; a scheme we cannot send to (tel:) ends here.
            owner.fail_now(416)
            return delivery
        peer = binding.target()
        domain = sender.domain
        sent_from = f"sip:{from_user}@{domain}" if from_user else f"sip:{domain}"
        request = build_request(
            method, uri, via=sender.via_for(peer),
            from_addr=f"<{sent_from}>;tag={sender.new_tag()}",
            to_addr=f"<sip:{user}@{domain}>", call_id=sender.new_call_id(), cseq=1,
            contact=sender.contact_for(peer, from_user) if method in NEEDS_CONTACT else None,
            headers=headers, body=body)
        if sender.send_request(request, peer, owner) is None:
            owner.fail_now(503)
        return delivery
