"""The checks RFC 3261 §8.2 asks of every request the PBX answers itself.

In the RFC's order, each either passes or gives the response to send:
method inspection (§8.2.1: 501 for a method we do not know at all, 405 with
Allow for one we know but do not take here), header inspection (§8.2.2.3:
420 with Unsupported for a Require option we do not support), content
processing (§8.2.3: 415 with Accept for a body type we cannot read), and,
for requests we would forward, Max-Forwards (§16.3: 483 when it reached 0).
The URI scheme check (416) happens in the parser, merged-request loop
detection (482) with the transactions, and 481 for unknown dialogs and
transactions in the endpoint, which knows them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pbx.sip.message import Request, Response, make_response

# Methods this SIP stack knows (RFC 3261 and the extensions a PBX meets).
KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})


@dataclass(frozen=True, slots=True, kw_only=True)
class UasPolicy:
    """What the PBX takes: the Allow, Supported and Accept it advertises."""

    allowed_methods: tuple[str, ...] = ("REGISTER", "OPTIONS")
    supported_extensions: tuple[str, ...] = ()
    accepted_types: tuple[str, ...] = ("application/sdp",)

    @property
    def allow_header(self) -> str:
        return ", ".join(self.allowed_methods)

    @property
    def accept_header(self) -> str:
        return ", ".join(self.accepted_types)

    @property
    def supported_header(self) -> str:
        return ", ".join(self.supported_extensions)


def check_request(
    request: Request,
    policy: UasPolicy,
    *,
    make_tag: Callable[[], str],
    forwarding: bool = False,
    reads_body: bool = True,
) -> Response | None:
    """The §8.2 answer to `request`, or None when it may be processed.

    ``forwarding``: the request is to be relayed to another user (INVITE to
    an extension), so Max-Forwards applies; a request addressed to the PBX
    itself (REGISTER, OPTIONS) is answered even with Max-Forwards 0 (§11).
    ``reads_body``: the PBX itself interprets the body; a body it relays (an
    INFO's DTMF, a MESSAGE's text) or hands to a plugin is not its to judge.
    ``make_tag`` gives the To tag of an answer, only when there is one.
    """
    method = request.method
    if method not in policy.allowed_methods:
        if method not in KNOWN_METHODS:
            return make_response(request, 501, to_tag=make_tag(),
                                 headers=[("Allow", policy.allow_header)])
        return make_response(request, 405, to_tag=make_tag(),
                             headers=[("Allow", policy.allow_header)])
    if method not in ("ACK", "CANCEL") and request.headers.get("require") is not None:
        unsupported = _unsupported(request.require, policy.supported_extensions)
        if unsupported:
            return make_response(request, 420, to_tag=make_tag(),
                                 headers=[("Unsupported", ", ".join(unsupported))])
    if reads_body and request.body and method != "ACK":
        content_type = request.content_type
        disposition = (request.headers.get("content-disposition") or "").split(";")[0].strip()
        optional = disposition.lower() == "render" or "handling=optional" in (
            request.headers.get("content-disposition") or "").lower()
        if (content_type is None or content_type.value not in policy.accepted_types) and (
                not optional):
            return make_response(request, 415, to_tag=make_tag(),
                                 headers=[("Accept", policy.accept_header)])
        encoding = request.headers.get("content-encoding")
        if encoding and encoding.strip().lower() != "identity":
            return make_response(request, 415, to_tag=make_tag(),
                                 headers=[("Accept-Encoding", "identity")])
    if forwarding:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards == 0:
            return make_response(request, 483, to_tag=make_tag())
    return None


def _unsupported(required: Iterable[str], supported: Iterable[str]) -> list[str]:
    known = {option.lower() for option in supported}
    return [option for option in required if option.lower() not in known]
