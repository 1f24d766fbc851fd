"""The call flows of a SIP textbook's introduction, corrected, parsed and written back.

The source is the introduction to SIP in ``/work/shared/seed`` (sections 2.1,
a call between two phones, and 2.2, the same through a proxy): fifteen
messages, six in 2.1 and nine in 2.2. Each is in ``tests/data/callflows`` as
the exact bytes of a datagram, with these corrections to the book's text:

- every ``Content-Length`` is the real byte count of the body (the book
  writes ``...`` or miscounts: its 2.1 SDP is 166 bytes, not 158, because
  its Table 2.1 miscounts the ``o=`` line), and a blank line ends the headers;
- 2.1 INVITE: the ``o=`` line gets the address Table 2.1 shows
  (``lab.high-voltage.example.org``); its To is ``sip:marconi@...`` as in
  every response and in-dialog request, since a UAS copies To into its
  responses (RFC 3261 §8.2.6.2) and user parts are case-sensitive (§19.1.4);
- 2.1 200 OK: From's host is ``high-voltage.example.org`` (the book drops
  ``example``), From being copied from the request;
- 2.2 INVITE: the Request-URI is ``munich.example.org``, as the text says;
  ``Subject`` gets its own line instead of running onto ``CSeq``; the SDP
  has ``c=`` before ``t=`` (RFC 4566 §5 field order);
- 2.2 forwarded INVITE and ACK: the request line ends with ``SIP/2.0``; the
  forwarded INVITE keeps the Subject and the body of the one received (a
  proxy changes neither, RFC 3261 §16.6), so ``m=`` is not run onto ``t=``
  and the port stays 49170;
- 2.2 200 OK: ``m=`` on its own line; the forwarded 200 OK has its Via on
  its own line and the very body of the 200 OK it forwards;
- 2.2 BYE: the Request-URI is Schrodinger's Contact, ``pc33.wave.example.org``.

Odd but legal spellings are kept: ``Content-length`` (header names are
case-insensitive, §7.3.1), unquoted display names with dots (``G. Marconi``
is ``*(token LWS)``), and the blank before ``;tag`` in the 2.2 BYE (LWS is
allowed around ``;``, §25.1 SEMI).

The book's slips then come back as negative tests, each with the answer the
RFC requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pbx.sip.errors import SipParseError
from pbx.sip.message import Request, Response, make_error_response, make_response, parse_message
from pbx.sip.uri import SipUri, parse_request_uri
from tests.sipdata import CALLFLOWS, load, typed_values


@dataclass(frozen=True, kw_only=True)
class Expected:
    """What a call-flow message must parse to.

    ``vias`` are (transport, host, port, branch, received); addresses are
    (display name, URI user, URI host, tag).
    """

    start: tuple[str, str] | tuple[int, str]  # (method, Request-URI) or (status, reason)
    vias: tuple[tuple[str, str, int | None, str, str | None], ...]
    from_: tuple[str, str, str, str]
    to: tuple[str, str, str, str | None]
    call_id: str
    cseq: tuple[int, str]
    contact: str | None = None
    content_type: str | None = None
    body_length: int = 0
    max_forwards: int | None = None


TESLA = ("Nikola Tesla", "n.tesla", "high-voltage.example.org", "76341")
MARCONI = ("G. Marconi", "marconi", "radio.example.org", "a53e42")
CALL_21 = "j2qu348ek2328ws"
VIA_TESLA = ("UDP", "lab.high-voltage.example.org", 5060, "z9hG4bKfw19b", None)
VIA_TESLA_RECEIVED = (*VIA_TESLA[:4], "100.101.102.103")
VIA_MARCONI = ("UDP", "tower.radio.example.org", 5060, "z9hG4bK392kf", None)

SCHRODINGER = ("E. Schrodinger", "schroed5244", "wave.example.org", "42")
HEISENBERG = ("Heisenberg", "werner.heisenberg", "munich.example.org", "314159")
CALL_22 = "4827311-391-32934"
VIA_SCHRODINGER = ("UDP", "100.101.102.103", 5060, "z9hG4bKmp17a", None)
VIA_PROXY = ("UDP", "proxy.munich.example.org", 5060, "z9hG4bK83842.1", None)
VIA_PROXY_RECEIVED = (*VIA_PROXY[:4], "100.101.102.105")
HEISENBERG_CONTACT = "sip:werner.heisenberg@200.201.202.203"

FLOWS: dict[str, Expected] = {
    # ---- 2.1: Tesla calls Marconi directly.
    "2.1-01-invite.sip": Expected(
        start=("INVITE", "sip:Marconi@radio.example.org"),
        vias=(VIA_TESLA,), from_=TESLA, to=(*MARCONI[:3], None), call_id=CALL_21,
        cseq=(1, "INVITE"), contact="sip:n.tesla@lab.high-voltage.example.org",
        content_type="application/sdp", body_length=166, max_forwards=70),
    "2.1-02-180-ringing.sip": Expected(
        start=(180, "Ringing"), vias=(VIA_TESLA_RECEIVED,), from_=TESLA, to=MARCONI,
        call_id=CALL_21, cseq=(1, "INVITE"), contact="sip:marconi@tower.radio.example.org"),
    "2.1-03-200-ok.sip": Expected(
        start=(200, "OK"), vias=(VIA_TESLA_RECEIVED,), from_=TESLA, to=MARCONI,
        call_id=CALL_21, cseq=(1, "INVITE"), contact="sip:marconi@tower.radio.example.org",
        content_type="application/sdp", body_length=163),
    "2.1-04-ack.sip": Expected(
        start=("ACK", "sip:marconi@tower.radio.example.org"),
        vias=(("UDP", "lab.high-voltage.example.org", 5060, "z9hG4bK321g", None),),
        from_=TESLA, to=MARCONI, call_id=CALL_21, cseq=(1, "ACK"), max_forwards=70),
    "2.1-05-bye.sip": Expected(
        start=("BYE", "sip:n.tesla@lab.high-voltage.example.org"), vias=(VIA_MARCONI,),
        from_=MARCONI, to=TESLA, call_id=CALL_21, cseq=(1392, "BYE"), max_forwards=70),
    "2.1-06-200-ok-bye.sip": Expected(
        start=(200, "OK"), vias=((*VIA_MARCONI[:4], "200.201.202.203"),),
        from_=MARCONI, to=TESLA, call_id=CALL_21, cseq=(1392, "BYE")),
    # ---- 2.2: Schrodinger calls Heisenberg through proxy.munich.example.org.
    "2.2-01-invite.sip": Expected(
        start=("INVITE", "sip:werner.heisenberg@munich.example.org"),
        vias=(VIA_SCHRODINGER,), from_=SCHRODINGER, to=(*HEISENBERG[:3], None),
        call_id=CALL_22, cseq=(1, "INVITE"), contact="sip:schroed5244@pc33.wave.example.org",
        content_type="application/sdp", body_length=159, max_forwards=70),
    "2.2-02-invite-forwarded.sip": Expected(
        start=("INVITE", HEISENBERG_CONTACT),
        vias=(VIA_PROXY, VIA_SCHRODINGER), from_=SCHRODINGER, to=(*HEISENBERG[:3], None),
        call_id=CALL_22, cseq=(1, "INVITE"), contact="sip:schroed5244@pc33.wave.example.org",
        content_type="application/sdp", body_length=159, max_forwards=69),
    "2.2-03-180-ringing.sip": Expected(
        start=(180, "Ringing"), vias=(VIA_PROXY_RECEIVED, VIA_SCHRODINGER),
        from_=SCHRODINGER, to=HEISENBERG, call_id=CALL_22, cseq=(1, "INVITE"),
        contact=HEISENBERG_CONTACT),
    "2.2-04-180-ringing-forwarded.sip": Expected(
        start=(180, "Ringing"), vias=(VIA_SCHRODINGER,), from_=SCHRODINGER, to=HEISENBERG,
        call_id=CALL_22, cseq=(1, "INVITE"), contact=HEISENBERG_CONTACT),
    "2.2-05-200-ok.sip": Expected(
        start=(200, "OK"), vias=(VIA_PROXY_RECEIVED, VIA_SCHRODINGER),
        from_=SCHRODINGER, to=HEISENBERG, call_id=CALL_22, cseq=(1, "INVITE"),
        contact=HEISENBERG_CONTACT, content_type="application/sdp", body_length=158),
    "2.2-06-200-ok-forwarded.sip": Expected(
        start=(200, "OK"), vias=(VIA_SCHRODINGER,), from_=SCHRODINGER, to=HEISENBERG,
        call_id=CALL_22, cseq=(1, "INVITE"), contact=HEISENBERG_CONTACT,
        content_type="application/sdp", body_length=158),
    "2.2-07-ack.sip": Expected(
        start=("ACK", HEISENBERG_CONTACT),
        vias=(("UDP", "100.101.102.103", 5060, "z9hG4bKka42", None),),
        from_=SCHRODINGER, to=HEISENBERG, call_id=CALL_22, cseq=(1, "ACK"), max_forwards=70),
    "2.2-08-bye.sip": Expected(
        start=("BYE", "sip:schroed5244@pc33.wave.example.org"),
        vias=(("UDP", "200.201.202.203", 5060, "z9hG4bK4332", None),),
        from_=HEISENBERG, to=SCHRODINGER, call_id=CALL_22, cseq=(2000, "BYE"), max_forwards=70),
    "2.2-09-200-ok-bye.sip": Expected(
        start=(200, "OK"), vias=(("UDP", "200.201.202.203", 5060, "z9hG4bK4332", None),),
        from_=HEISENBERG, to=SCHRODINGER, call_id=CALL_22, cseq=(2000, "BYE")),
}


def flow(name: str) -> bytes:
    return load(CALLFLOWS / name)


def test_every_file_has_an_expectation() -> None:
    """Fifteen messages: 2.1 has six, 2.2 has nine."""
    on_disk = sorted(path.name for path in CALLFLOWS.glob("*.sip"))
    assert on_disk == sorted(FLOWS)
    assert len(on_disk) == 15


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_files_are_well_formed_datagrams(name: str) -> None:
    """CRLF everywhere, a blank line before the body, a true numeric Content-Length."""
    data = flow(name)
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert b"\r" not in head.replace(b"\r\n", b"")
    lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    assert lengths == [str(len(body)).encode()]
    if body:
        assert body.endswith(b"\r\n")
        assert b"\n" not in body.replace(b"\r\n", b"")


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_parse_typed_values(name: str) -> None:
    expected = FLOWS[name]
    message = parse_message(flow(name))

    if isinstance(expected.start[0], str):
        assert isinstance(message, Request)
        method, uri_text = expected.start
        assert message.method == method
        assert str(message.uri) == uri_text
        assert isinstance(message.uri, SipUri)
        user, _, host = uri_text.removeprefix("sip:").partition("@")
        assert (message.uri.scheme, message.uri.user, message.uri.host) == ("sip", user, host)
        assert message.uri.port is None
        assert message.uri.params == ()
    else:
        assert isinstance(message, Response)
        assert (message.status, message.reason) == expected.start

    got_vias = tuple((v.transport, v.host, v.port, v.branch, v.received) for v in message.vias)
    assert got_vias == expected.vias
    assert message.top_via.branch == expected.vias[0][3]
    assert all(v.protocol == "SIP/2.0" for v in message.vias)

    for addr, (display, user, host, tag) in (
        (message.from_addr, expected.from_),
        (message.to_addr, expected.to),
    ):
        assert addr.display_name == display
        assert isinstance(addr.uri, SipUri)
        assert (addr.uri.user, addr.uri.host, addr.uri.port) == (user, host, None)
        assert addr.tag == tag

    assert message.call_id == expected.call_id
    assert (message.cseq.number, message.cseq.method) == expected.cseq
    if expected.contact is None:
        assert message.contacts == []
    else:
        assert [c.uri_text for c in message.contacts] == [expected.contact]
        assert message.contacts[0].display_name is None
        assert isinstance(message.contacts[0].uri, SipUri)
    content_type = message.content_type
    assert (None if content_type is None else content_type.value) == expected.content_type
    assert len(message.body) == expected.body_length
    assert message.content_length == expected.body_length
    assert message.max_forwards == expected.max_forwards


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_round_trip_is_byte_exact(name: str) -> None:
    data = flow(name)
    message = parse_message(data)
    written = message.to_bytes()
    assert written == data
    again = parse_message(written)
    assert typed_values(again) == typed_values(message)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_stream_parse_agrees_with_datagram(name: str) -> None:
    """Every flow message carries Content-Length, so it is also valid on TCP."""
    data = flow(name)
    assert typed_values(parse_message(data, datagram=False)) == typed_values(parse_message(data))


def test_sdp_bodies_parse() -> None:
    sdp = pytest.importorskip("pbx.sip.sdp")
    for name, expected in FLOWS.items():
        if expected.content_type == "application/sdp":
            sdp.SessionDescription.parse(parse_message(flow(name)).body)


# ------------------------------------------------------- building the flows


def _received(request: Request, address: str) -> None:
    """What a UAS transport does on receipt (RFC 3261 §18.2.1): stamp the top Via."""
    vias = request.headers.values("via")
    top = request.top_via.with_param("received", address)
    request.headers.set_all("Via", [str(top), *vias[1:]])


@pytest.mark.parametrize(
    ("invite", "ringing", "received", "to_tag", "contact"),
    [
        ("2.1-01-invite.sip", "2.1-02-180-ringing.sip", "100.101.102.103", "a53e42",
         "<sip:marconi@tower.radio.example.org>"),
        ("2.2-02-invite-forwarded.sip", "2.2-03-180-ringing.sip", "100.101.102.105",
         "314159", f"<{HEISENBERG_CONTACT}>"),
    ],
)
def test_make_response_reproduces_the_180(
    invite: str, ringing: str, received: str, to_tag: str, contact: str
) -> None:
    request = parse_message(flow(invite))
    assert isinstance(request, Request)
    _received(request, received)
    response = make_response(request, 180, to_tag=to_tag, headers=[("Contact", contact)])
    expected = parse_message(flow(ringing))

    again = parse_message(response.to_bytes())
    assert isinstance(again, Response)
    assert (again.status, again.reason) == (180, "Ringing")
    assert again.headers.values("via") == expected.headers.values("via")
    assert [str(v) for v in again.vias] == [str(v) for v in expected.vias]
    for mine, theirs in ((again.from_addr, expected.from_addr), (again.to_addr, expected.to_addr)):
        assert (mine.display_name, mine.uri_text, mine.params) == (
            theirs.display_name, theirs.uri_text, theirs.params)
    assert again.to_addr.tag == to_tag
    assert again.call_id == expected.call_id
    assert again.cseq == expected.cseq
    assert [c.uri_text for c in again.contacts] == [c.uri_text for c in expected.contacts]
    assert again.body == b""
    assert again.content_length == 0
    # Header order as in the book: Via, To, From, Call-ID, CSeq, Contact, Content-Length.
    assert [name.lower() for name, _ in again.headers] == [
        name.lower() for name, _ in expected.headers]


def test_make_response_keeps_an_existing_to_tag() -> None:
    """A response within a dialog (200 to the BYE) keeps the request's To tag."""
    bye = parse_message(flow("2.1-05-bye.sip"))
    assert isinstance(bye, Request)
    _received(bye, "200.201.202.203")
    response = make_response(bye, 200, to_tag="ignored")
    assert response.to_bytes() == flow("2.1-06-200-ok-bye.sip")


def test_proxy_forwarding_produces_the_forwarded_invite() -> None:
    """RFC 3261 §16.6: new Request-URI, Max-Forwards minus one, a Via on top."""
    request = parse_message(flow("2.2-01-invite.sip"))
    assert isinstance(request, Request)
    max_forwards = request.max_forwards
    assert max_forwards == 70
    request.uri = parse_request_uri(HEISENBERG_CONTACT)
    request.headers.add_first(
        "Via", "SIP/2.0/UDP proxy.munich.example.org:5060;branch=z9hG4bK83842.1")
    request.headers.set("Max-Forwards", str(max_forwards - 1))

    forwarded = flow("2.2-02-invite-forwarded.sip")
    assert request.max_forwards == 69
    assert [str(v) for v in request.vias] == [str(v) for v in parse_message(forwarded).vias]
    assert request.to_bytes() == forwarded


@pytest.mark.parametrize(
    ("received", "forwarded"),
    [
        ("2.2-03-180-ringing.sip", "2.2-04-180-ringing-forwarded.sip"),
        ("2.2-05-200-ok.sip", "2.2-06-200-ok-forwarded.sip"),
    ],
)
def test_proxy_removes_its_via_from_responses(received: str, forwarded: str) -> None:
    """RFC 3261 §16.7 step 3: the proxy's own Via comes off, nothing else changes."""
    response = parse_message(flow(received))
    assert response.top_via.host == "proxy.munich.example.org"
    response.headers.set_all("Via", response.headers.values("via")[1:])
    assert response.to_bytes() == flow(forwarded)


# ------------------------------------------------------------ the book's slips


def _error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


def _check_answer(data: bytes, error: SipParseError, *, parses: bool = True) -> None:
    """A parse error's stateless answer has its status and, unless it had to
    copy a broken core header (§8.2.6.2), itself parses."""
    answer = make_error_response(data, error, to_tag="x")
    if not error.answerable:
        assert answer is None
        return
    assert answer is not None
    assert answer.startswith(b"SIP/2.0 %d " % error.status)
    if not parses:
        with pytest.raises(SipParseError) as info:
            parse_message(answer)
        assert info.value.reason == error.reason  # broken as the request was, no worse
        return
    response = parse_message(answer)
    assert isinstance(response, Response)
    assert response.status == error.status
    assert response.to_addr.tag == "x"


def test_slip_a_header_run_onto_cseq() -> None:
    """``CSeq: 1 INVITE Subject: ...``: CSeq = 1*DIGIT LWS Method (§20.16), so 400.

    The Via is intact, so the 400 can and must be sent. It copies the CSeq
    line as received (§8.2.6.2), so it is as malformed as the request was:
    see `test_answer_is_no_worse_than_the_request` in test_torture.py.
    """
    data = flow("2.2-01-invite.sip").replace(
        b"CSeq: 1 INVITE\r\nSubject:", b"CSeq: 1 INVITE Subject:")
    error = _error(data)
    assert error.status == 400
    assert error.answerable
    assert "CSeq" in error.reason
    _check_answer(data, error, parses=False)


def test_slip_b_request_line_without_version() -> None:
    """``INVITE sip:...`` with no SIP-Version: not a Request-Line (§7.1, §25.1).

    Without a version the line is not recognisably SIP at all, so nothing is
    answered (RFC 3261 §18.2.1 lets a server drop what it cannot parse).
    """
    data = flow("2.2-02-invite-forwarded.sip").replace(
        b"@200.201.202.203 SIP/2.0\r\n", b"@200.201.202.203\r\n")
    error = _error(data)
    assert error.status == 400
    assert not error.answerable
    _check_answer(data, error)


def test_slip_b_ack_without_version() -> None:
    data = flow("2.2-07-ack.sip").replace(b"@200.201.202.203 SIP/2.0\r\n", b"@200.201.202.203\r\n")
    error = _error(data)
    assert (error.status, error.answerable) == (400, False)


def test_slip_c_sdp_lines_run_together() -> None:
    """``t=0 0 m=audio ...``: the SIP message is fine, the SDP is not (RFC 4566 §5.9)."""
    sdp = pytest.importorskip("pbx.sip.sdp")
    data = flow("2.2-02-invite-forwarded.sip").replace(b"t=0 0\r\nm=", b"t=0 0 m=")
    data = data.replace(b"Content-Length: 159", b"Content-Length: 158")
    message = parse_message(data)
    assert len(message.body) == 158
    assert message.to_bytes() == data
    with pytest.raises(SipParseError) as info:
        sdp.SessionDescription.parse(message.body)
    assert info.value.status == 400


def test_slip_d_content_length_dots() -> None:
    """``Content-Length: ...``: Content-Length = 1*DIGIT (§20.14), so 400."""
    data = flow("2.1-01-invite.sip").replace(b"Content-Length: 166", b"Content-Length: ...")
    error = _error(data)
    assert (error.status, error.answerable) == (400, True)
    _check_answer(data, error)
    data = flow("2.1-03-200-ok.sip").replace(b"Content-Length: 163", b"Content-Length: ...")
    error = _error(data)
    assert error.status == 400
    assert not error.answerable  # a response is never answered


def test_slip_e_via_run_onto_status_line() -> None:
    """``SIP/2.0 200 OK Via: ...``: the rest is reason phrase, and Via is missing.

    Either way the message cannot be used, and a response is never answered
    (§8.1.3.3, §18.1.2: a response without a usable Via is dropped).
    """
    data = flow("2.2-06-200-ok-forwarded.sip").replace(b"200 OK\r\nVia:", b"200 OK Via:")
    error = _error(data)
    assert not error.answerable
    assert error.status == 400
    _check_answer(data, error)


def test_slip_f_content_length_longer_than_body_on_udp() -> None:
    """The book's 158 for a 166-byte body is short; the reverse is fatal on UDP (§18.3)."""
    data = flow("2.1-01-invite.sip").replace(b"Content-Length: 166", b"Content-Length: 170")
    error = _error(data)
    assert (error.status, error.answerable) == (400, True)
    _check_answer(data, error)


def test_books_short_content_length_truncates_the_body() -> None:
    """The book's own count, 158 for 166 bytes: the body is cut at 158 (§18.3)."""
    data = flow("2.1-01-invite.sip").replace(b"Content-Length: 166", b"Content-Length: 158")
    message = parse_message(data)
    assert message.body == flow("2.1-01-invite.sip").split(b"\r\n\r\n", 1)[1][:158]
    assert message.to_bytes() == data[: len(data) - 8]
