"""`Headers` keeps an index of each header's first line; edits must keep it true.

Appending a line and replacing a first line update the index in place
instead of throwing it away (a received request has its top Via replaced,
and every response gets lines appended): this checks, against the lines
themselves, that what ``get`` answers after any run of edits is the first
line's value.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pbx.sip.message import Headers, parse_message

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
