"""What plugins' requests and answers look like on each side of the API.

A plugin sees requests as `pbx.dialplan.IncomingRequest` values and answers
with a status or a `pbx.dialplan.Reply`; the core sees `Request` and
`Response`. This module turns one into the other, runs a plugin's handler
to its answer, and names the seams the plugin services need from the core
(`RequestSender`, `Responder`, `Timers`), so that each service can be
driven by a test double and re-pointed when the core's wiring changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.core.call import Cancellable
from pbx.core.owners import ResponseOwner
from pbx.dialplan import IncomingRequest, Reject, Reply
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.transaction import ClientTransaction, ServerTransaction
from pbx.sip.uri import user_of

PLUGIN_ERROR = Reply(500, "Plugin error")


class RequestSender(Protocol):
    """Sends a request and hands its responses to an owner; knows our addresses.

    `pbx.core.calls.CallManager` is one: the responses to what it sends
    reach the owner through the endpoint (``ResponseReceived``,
    ``TransactionTimedOut``, ``TransportErrorReported``).
    """

    @property
    def domain(self) -> str: ...

    def now(self) -> float: ...

    def send_request(self, request: Request, peer: Peer,
                     owner: ResponseOwner) -> ClientTransaction[Peer] | None:
        """None when it cannot be sent at all (the transaction table is full)."""

    def via_for(self, peer: Peer) -> str: ...

    def contact_for(self, peer: Peer, user: str | None) -> str: ...

    def new_tag(self) -> str: ...

    def new_call_id(self) -> str: ...


class Responder(Protocol):
    """Answers a request after its handling returned (`SipEndpoint.respond_later`)."""

    def respond_later(self, transaction: ServerTransaction[Peer], request: Request,
                      peer: Peer, response: Response) -> None: ...


class Timers(Protocol):
    """The core's timers (`CallManager.call_later`: one reactor timer for them all)."""

    def call_later(self, delay_s: float, work: Callable[[], None]) -> Cancellable: ...


def incoming_request(request: Request, sender: str | None) -> IncomingRequest:
    """`request` as a plugin sees it, sent by the authenticated `sender`."""
    content_type = request.content_type
    uri = str(request.uri)
    return IncomingRequest(
        method=request.method, sender=sender, sender_uri=request.from_addr.uri_text,
        target=user_of(uri) or uri, request_uri=uri,
        headers={name.lower(): value for name, value in reversed(list(request.headers))},
        body=request.body,
        content_type=None if content_type is None else content_type.value,
    )


def response_for(request: Request, reply: Reply, *, to_tag: str | None,
                 contact: str | None = None) -> Response:
    """The response `reply` makes to `request`; `contact` is added to a 2xx without one."""
    headers: list[tuple[str, str]] = list(reply.headers)
    if contact is not None and reply.status < 300 and not any(
            name.lower() in ("contact", "m") for name, _ in headers):
        headers.insert(0, ("Contact", contact))
    if reply.body and reply.content_type is not None:
        headers.append(("Content-Type", reply.content_type))
    return make_response(request, reply.status, reply.reason, to_tag=to_tag, headers=headers,
                         body=reply.body)


def decide(handling: Callable[[], Awaitable[int | Reply]], done: Callable[[Reply], None],
           *, log: Logger, method: str) -> None:
    """Run a plugin's handler and give `done` its answer as a `Reply`.

    `Reject` is an answer like any other; any other exception, or a
    status that is not final, is the plugin's bug: logged, and 500.
    """

    async def deciding() -> Reply:
        try:
            decided = await handling()
        except Reject as refusal:
            return Reply(refusal.status, refusal.reason)
        return decided if isinstance(decided, Reply) else Reply(decided)

    def failed(failure: Failure) -> None:
        log.failure("Plugin handler for {method} failed", failure=failure, method=method)
        done(PLUGIN_ERROR)

    Deferred.fromCoroutine(deciding()).addCallbacks(done, failed)


def headers_with_type(headers: Sequence[tuple[str, str]], body: bytes,
                      content_type: str | None) -> list[tuple[str, str]]:
    """A plugin's headers for a request it sends, with the body's Content-Type."""
    extra = list(headers)
    if body and content_type is not None:
        extra.append(("Content-Type", content_type))
    return extra
