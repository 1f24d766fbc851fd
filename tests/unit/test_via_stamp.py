"""RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on a received request's top Via.

What a phone behind NAT gets back depends on these: the response is routed
by them (RFC 3581 §4). Checked on the wire form of the stamped request (what
a proxy would forward, what the response copies) and on its parsed Via.
"""

from __future__ import annotations

import pytest

from pbx.sip.message import Request, parse_message
from pbx.sip.peer import Peer
from pbx.sip.via import stamp_received
from tests.sipdata import crlf


def options(*vias: str) -> Request:
    message = parse_message(crlf("\n".join([
        "OPTIONS sip:pbx.test SIP/2.0",
        *(f"Via: {via}" for via in vias),
        "From: <sip:1001@pbx.test>;tag=a1",
        "To: <sip:pbx.test>",
        "Call-ID: stamp-1",
        "CSeq: 1 OPTIONS",
        "Max-Forwards: 70",
        "Content-Length: 0",
        "",
    ])))
    assert isinstance(message, Request)
    return message


def via_lines(request: Request) -> list[str]:
    """The Via lines of the request as it would go on the wire."""
    return [line for line in request.to_bytes().decode().split("\r\n")
            if line.lower().startswith("via:")]


def test_rport_asked_for_gets_the_source_port_and_the_text_is_edited_in_place() -> None:
    request = options("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1;rport")
    stamp_received(request, Peer("udp", "10.0.0.5", 40123))
    assert via_lines(request) == ["Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-1;rport=40123"]
    assert request.top_via.params == (("branch", "z9hG4bK-1"), ("rport", "40123"))


def test_rport_before_other_parameters_is_filled_where_it_stands() -> None:
    request = options("SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bK-2")
    stamp_received(request, Peer("udp", "10.0.0.5", 40123))
    assert via_lines(request) == ["Via: SIP/2.0/UDP 10.0.0.5:5060;rport=40123;branch=z9hG4bK-2"]


def test_a_nat_address_gets_received_and_rport() -> None:
    """The phone wrote its private address; the packet came from the NAT's."""
    request = options("SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-3;rport")
    stamp_received(request, Peer("udp", "203.0.113.9", 61000))
    via = request.top_via
    assert dict(via.params) == {"branch": "z9hG4bK-3", "rport": "61000",
                                "received": "203.0.113.9"}
    assert via.host == "192.168.1.20" and via.port == 5060
    [line] = via_lines(request)
    assert "received=203.0.113.9" in line and "rport=61000" in line


def test_without_rport_only_received_is_added() -> None:
    request = options("SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-4")
    stamp_received(request, Peer("udp", "203.0.113.9", 61000))
    assert dict(request.top_via.params) == {"branch": "z9hG4bK-4", "received": "203.0.113.9"}


def test_a_stale_received_is_replaced_not_repeated() -> None:
    request = options("SIP/2.0/UDP 192.168.1.20:5060;received=198.51.100.1;branch=z9hG4bK-5")
    stamp_received(request, Peer("udp", "203.0.113.9", 61000))
    [line] = via_lines(request)
    assert line.count("received=") == 1 and "received=203.0.113.9" in line


@pytest.mark.parametrize("via", [
    "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-6",
    "SIP/2.0/UDP [2001:db8::5]:5060;branch=z9hG4bK-6",
])
def test_nothing_to_stamp_leaves_the_request_byte_for_byte(via: str) -> None:
    request = options(via)
    before = request.to_bytes()
    host = "2001:db8::5" if "[" in via else "10.0.0.5"
    stamp_received(request, Peer("udp", host, 5060))
    assert request.to_bytes() == before


def test_only_the_top_via_of_several_on_one_line_is_stamped() -> None:
    request = options("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-7;rport, "
                      "SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-8;rport")
    stamp_received(request, Peer("udp", "10.0.0.5", 40123))
    assert via_lines(request) == [
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-7;rport=40123",
        "Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-8;rport",
    ]
    assert [via.port for via in request.vias] == [5060, 5070]
    assert dict(request.vias[1].params)["rport"] is None  # valueless: not stamped


def test_the_stamped_via_is_what_a_response_copies() -> None:
    """The response goes back with the stamped Via (RFC 3581 §4)."""
    from pbx.sip.message import make_response

    request = options("SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-9;rport")
    stamp_received(request, Peer("udp", "203.0.113.9", 61000))
    response = make_response(request, 200, to_tag="t1")
    assert b"received=203.0.113.9" in response.to_bytes()
    assert b"rport=61000" in response.to_bytes()
