"""Helpers shared by the parser tests: data files and a message's typed values.

The ``.sip`` files under ``tests/data`` are exactly the bytes of one datagram
each (CRLF line ends), so the round-trip tests can compare bytes with bytes
[aiortc ``tests/*.bin``].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pbx.sip.headers import NameAddr, Via, header_key
from pbx.sip.message import Request, Response

DATA = Path(__file__).parent / "data"
CALLFLOWS = DATA / "callflows"
TORTURE = DATA / "torture"


def load(path: Path) -> bytes:
    return path.read_bytes()


def crlf(text: str) -> bytes:
    """A message written one line per source line, sent with CRLF line ends."""
    return "".join(line + "\r\n" for line in text.splitlines()).encode()


def via_values(via: Via) -> tuple[Any, ...]:
    return (via.protocol, via.transport, via.host, via.port, via.params)


def addr_values(addr: NameAddr) -> tuple[Any, ...]:
    return (addr.display_name, addr.uri_text, addr.params, addr.is_star)


def typed_values(message: Request | Response) -> dict[str, Any]:
    """Everything the typed views say about a message, as plain comparable values.

    Two messages with equal typed values are the same message as far as any
    transaction, dialog or proxy logic can tell.
    """
    values: dict[str, Any] = {
        "vias": [via_values(v) for v in message.vias],
        "from": addr_values(message.from_addr),
        "to": addr_values(message.to_addr),
        "call_id": message.call_id,
        "cseq": (message.cseq.number, message.cseq.method),
        "contacts": [addr_values(c) for c in message.contacts],
        "max_forwards": message.max_forwards,
        "content_type": message.content_type,
        "body": message.body,
        # Every line but Content-Length, which is rewritten on output.
        "headers": [(name, value) for name, value in message.headers
                    if header_key(name) != "content-length"],
    }
    if isinstance(message, Request):
        values["start"] = ("request", message.method, str(message.uri))
    else:
        values["start"] = ("response", message.status, message.reason)
    return values
