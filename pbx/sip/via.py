"""What a receiver writes into the top Via of a request (RFC 3261 §18.2.1, RFC 3581).

A request is answered where it came from, not where its Via says: a phone
behind NAT writes its private address, and only the source address and
port of the packet reach it. The receiver records them in the top Via
(``received``, and ``rport``'s value when the phone asked for it) and the
response is routed by them (RFC 3581 §4). Pure SIP: a function of the
request and the address it came from.
"""

from __future__ import annotations

import re

from pbx.sip.headers import Via
from pbx.sip.message import Request
from pbx.sip.peer import Peer

_BARE_RPORT = re.compile(r";[ \t]*rport(?=[ \t]*(?:;|$))", re.IGNORECASE)
"""A valueless rport parameter in a Via's text (RFC 3581 §3: ``rport`` with no value)."""


def stamp_received(request: Request, source: Peer) -> None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via of `request`.

    ``received`` is added when the Via's sent-by host is not the source
    address; a valueless ``rport`` gets the source port. Every request
    pays for this, so the common case (one Via value on its line,
    ``rport`` asked for, no ``received`` needed) edits the text in place,
    and the request keeps the stamped `Via` as its parsed view
    (`Request.set_top_via`) instead of parsing it again.
    """
    via = request.top_via
    params = via.params
    host = source.host
    add_received = via.host != host and via.host.strip("[]") != host
    rport_at = -1
    for index, (name, value) in enumerate(params):
        if not value and (name == "rport" or name.lower() == "rport"):
            rport_at = index
            break
    if not add_received and rport_at < 0:
        return
    new_params = list(params)
    if add_received:
        new_params = [p for p in new_params if p[0].lower() != "received"]
        new_params.append(("received", host))
        rport_at = next((i for i, (name, value) in enumerate(new_params)
                         if not value and name.lower() == "rport"), -1)
    if rport_at >= 0:
        new_params[rport_at] = (new_params[rport_at][0], str(source.port))
    stamped = Via(transport=via.transport, host=via.host, port=via.port,
                  params=tuple(new_params), protocol=via.protocol)
    text = None
    if not add_received:
        line = request.headers.get("via") or ""
        if "," not in line:
            if line.endswith(";rport"):  # where phones put it: no regex needed
                text = f"{line}={source.port}"
            else:
                edited = _BARE_RPORT.sub(f";rport={source.port}", line, count=1)
                if edited != line:
                    text = edited
    request.set_top_via(stamped, text)
