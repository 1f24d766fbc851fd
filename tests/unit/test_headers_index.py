"""`Headers` keeps an index of each header's first line; edits must keep it true.

Appending a line and replacing a first line update the index in place
instead of throwing it away (a received request has its top Via replaced,
and every response gets lines appended): this checks, against the lines
themselves, that what ``get`` answers after any run of edits is the first
line's value.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx.sip.errors import SipParseError
from pbx.sip.message import Headers, Request, parse_message

NAMES = ["Via", "v", "Contact", "m", "X-Extra", "Route"]
"""Compact forms and full names of the same headers on purpose: one lookup key each."""

_OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["add", "add_first", "set", "set_first_value", "set_all", "remove"]),
    st.sampled_from(NAMES),
    st.text(alphabet="abc", min_size=1, max_size=3)), max_size=12)


def _received() -> Headers:
    return parse_message(
        b"OPTIONS sip:pbx.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-1\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK-2\r\n"
        b"From: <sip:a@pbx.test>;tag=1\r\nTo: <sip:pbx.test>\r\n"
        b"Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContact: <sip:a@10.0.0.1>\r\n"
        b"Content-Length: 0\r\n\r\n").headers


@given(_OPERATIONS)
def test_first_line_lookups_stay_true_after_any_edits(
        operations: list[tuple[str, str, str]]) -> None:
    headers = _received()
    for operation, name, value in operations:
        headers.get("via")  # build the index, so that each edit meets one
        if operation == "set_first_value":
            if headers.get(name) is None:
                continue
            headers.set_first_value(name, value)
        elif operation == "set_all":
            headers.set_all(name, [value, value + "2"])
        elif operation == "remove":
            headers.remove(name)
        else:
            getattr(headers, operation)(name, value)
        for probe in NAMES:
            lines = headers.get_all(probe)
            assert headers.get(probe) == (lines[0] if lines else None), (operation, name, probe)


_VIEW_EDITS = [
    ("set", "Via", "SIP/2.0/TCP 10.0.0.9;branch=z9hG4bK-9", lambda m: m.top_via.host, "10.0.0.9"),
    ("set_first_value", "v", "SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK-8",
     lambda m: m.top_via.branch, "z9hG4bK-8"),
    ("add_first", "Via", "SIP/2.0/UDP 10.0.0.7;branch=z9hG4bK-7",
     lambda m: m.top_via.host, "10.0.0.7"),
    ("set", "f", "<sip:b@pbx.test>;tag=2", lambda m: m.from_addr.tag, "2"),
    ("set_first_value", "To", "<sip:pbx.test>;tag=3", lambda m: m.to_addr.tag, "3"),
    ("set_all", "Call-ID", "d", lambda m: m.call_id, "d"),
    ("set", "i", "e", lambda m: m.call_id, "e"),
    ("set_first_value", "CSeq", "7 OPTIONS", lambda m: m.cseq.number, 7),
]


@pytest.mark.parametrize(("operation", "name", "value", "view", "expected"), _VIEW_EDITS)
def test_the_typed_views_follow_an_edit_of_their_header(
        operation: str, name: str, value: str, view: Callable[[Request], object],
        expected: object) -> None:
    request = parse_message(
        b"OPTIONS sip:pbx.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-1\r\n"
        b"From: <sip:a@pbx.test>;tag=1\r\nTo: <sip:pbx.test>\r\n"
        b"Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(request, Request)
    # Each view read (and kept) before the edit, as a transaction does.
    before = (request.top_via, request.from_addr, request.to_addr, request.call_id,
              request.cseq)
    getattr(request.headers, operation)(name, [value] if operation == "set_all" else value)
    assert view(request) == expected
    after = (request.top_via, request.from_addr, request.to_addr, request.call_id,
             request.cseq)
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 1  # only that one moved


def test_removing_a_header_forgets_its_view() -> None:
    request = parse_message(
        b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-1\r\n"
        b"From: <sip:a@pbx.test>;tag=1\r\nTo: <sip:pbx.test>\r\n"
        b"Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    assert request.call_id == "c"
    request.headers.remove("call-id")
    with pytest.raises(SipParseError):
        request.call_id  # noqa: B018
