"""Helpers shared by the transaction-layer tests: requests as a peer sends them, drains."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence

from pbx.sip.events import TransactionEvent
from pbx.sip.message import Request, Response, build_request, make_response, parse_message
from pbx.sip.transaction import Input, Timer, Transaction, TransactionLayer, TransactionState
from pbx.sip.uri import parse_request_uri

S = TransactionState
I = Input  # noqa: E741

UAC = "uac-address"  # the layer treats addresses as opaque values
UAS = "uas-address"
BRANCH = "z9hG4bK-test-1"


def still_alive(ids: Iterable[int], kind: type) -> int:
    """How many of the objects with these ids are still alive after a full collection.

    What `weakref` would tell, for classes that take no weak references (the
    compiled transaction classes, see `pbx.compiled`). An id could be reused
    by a new object of the same kind only if one were made meanwhile; the
    callers make none.
    """
    wanted = set(ids)
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind and id(obj) in wanted)


def wire(message: Request | Response) -> Request | Response:
    """The message as the peer sees it: serialised and parsed again."""
    return parse_message(message.to_bytes())


def make_request(
    method: str = "INVITE",
    *,
    branch: str | None = BRANCH,
    sent_by: str = "10.0.0.1:5060",
    transport: str = "UDP",
    call_id: str = "call-1@10.0.0.1",
    from_tag: str = "a1",
    to_tag: str | None = None,
    cseq: int = 1,
    uri: str = "sip:bob@example.org",
    routes: Sequence[str] = (),
    via: str | None = None,
) -> Request:
    if via is None:
        via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    to_addr = "<sip:bob@example.org>" + (f";tag={to_tag}" if to_tag else "")
    built = build_request(
        method, parse_request_uri(uri), via=via,
        from_addr=f"\"Alice\" <sip:alice@example.org>;tag={from_tag}", to_addr=to_addr,
        call_id=call_id, cseq=cseq, headers=[("Route", route) for route in routes],
        body=b"v=0\r\n" if method == "INVITE" else b"",
    )
    parsed = wire(built)
    assert isinstance(parsed, Request)
    return parsed


def make_ack(invite: Request, to_tag: str | None = "b1", *, branch: str | None = None) -> Request:
    """An ACK as the peer would send it: the INVITE's branch unless told otherwise."""
    via = invite.top_via
    return make_request(
        "ACK", branch=branch or via.branch, sent_by=via.sent_by, transport=via.transport,
        call_id=invite.call_id, from_tag=invite.from_addr.tag or "", to_tag=to_tag,
        cseq=invite.cseq.number, uri=str(invite.uri))


def respond_to(request: Request, status: int, to_tag: str | None = "b1") -> Response:
    response = wire(make_response(request, status, to_tag=to_tag))
    assert isinstance(response, Response)
    return response


def drain(layer: TransactionLayer[str]) -> list[TransactionEvent[str]]:
    events = []
    while (event := layer.next_event()) is not None:
        events.append(event)
    return events


def sent(layer: TransactionLayer[str]) -> list[Request | Response]:
    return [parse_message(out.data) for out in layer.take_outgoing()]


def label(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else str(message.status)


def fire(layer: TransactionLayer[str], transaction: Transaction[str], timer: Timer) -> bool:
    """Fire exactly `timer` of `transaction`; False if it is not running.

    Timers due earlier fire first and their output is discarded, so the
    caller sees only what this one timer did.
    """
    when = transaction.timers.get(timer)
    if when is None:
        return False
    layer.handle_timer(when - 0.001)
    drain(layer)
    layer.take_outgoing()
    layer.handle_timer(when)
    return True


def run_timers(layer: TransactionLayer[str], until: float) -> list[tuple[float, list[str]]]:
    """Fire deadlines one by one up to `until`: [(time, labels of what went out)]."""
    fired = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        fired.append((deadline, [label(m) for m in sent(layer)]))
    return fired

