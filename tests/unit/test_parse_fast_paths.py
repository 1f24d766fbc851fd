"""The parser's shortcuts against the exact rules they stand in for.

`parse_message` remembers header lines and request lines it has read
(`message._LINES`, `message._REQUEST_LINES`), and `Via.parse` / `NameAddr.parse` remember
the part of a value before its parameters (`headers._VIA_HEADS`,
`headers._NAME_ADDR_HEADS`). Each test here reads the same input both ways,
the second time with the caches warm, and requires the same outcome: the
same header entries and typed values, or the same error (reason, status,
answerable). A wrong shortcut fails them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pbx.sip import headers as headers_module
from pbx.sip import message as message_module
from pbx.sip.errors import SipParseError
from pbx.sip.headers import NameAddr, Via
from pbx.sip.message import DEFAULT_LIMITS, Headers, Response, parse_message
from tests.unit.test_fuzz import mutated, views

SETTINGS = settings(max_examples=1500, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def register(call: int, authorization: str | None = None, *, via_params: str = "") -> bytes:
    """A REGISTER as SIPp writes it (bench/register_cpu.py)."""
    lines = [
        "REGISTER sip:pbx.test SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{call}-1;rport{via_params}",
        "Max-Forwards: 70",
        f"From: <sip:u0001@pbx.test>;tag={call}",
        "To: <sip:u0001@pbx.test>",
        f"Call-ID: {call}-1@127.0.0.1",
        "CSeq: 1 REGISTER",
        "Contact: <sip:u0001@127.0.0.1:5061;transport=UDP>",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["Expires: 3600", "User-Agent: sipp", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def exact(data: bytes) -> Any:
    """What `parse_message` gives by the exact rules: `_screened_lines` for every
    message, nothing remembered from earlier messages (the caches emptied)."""
    for cache in (message_module._LINES, message_module._REQUEST_LINES,
                  headers_module._VIA_HEADS, headers_module._NAME_ADDR_HEADS,
                  message_module._NAME_ADDRS, message_module._CSEQS):
        cache.clear()
    try:
        try:
            lines, rest = message_module._screened_lines(data, data.find(b"\r\n\r\n"))
            start = lines[0]
            message = message_module._parse_start_line(
                start.strip(" \t") if start[:1] != " " else start)
            entries, first = message_module._parse_header_lines(lines, DEFAULT_LIMITS, False)
            message.headers = Headers._from_parsed(entries, first)
            try:
                message_module._check_and_frame(message, rest, True)
            except SipParseError as error:
                if isinstance(message, Response):
                    error.answerable = False
                raise
        except message_module._WithLine as start_error:
            line_error = start_error.error
            line_error.answerable = message_module._has_usable_via(data)
            raise line_error from None
        except SipParseError as error:
            if error.answerable and not message_module._has_usable_via(data):
                error.answerable = False
            raise
    except SipParseError as error:
        return ("error", error.reason, error.status, error.answerable)
    return described(message)


def fast(data: bytes) -> Any:
    try:
        return described(parse_message(data))
    except SipParseError as error:
        return ("error", error.reason, error.status, error.answerable)


def described(message: Any) -> Any:
    start = (message.method, message._uri_text) if hasattr(message, "method") else (
        message.status, message.reason)
    return (start, list(message.headers._entries), message.body, views(message),
            message.to_bytes())


def warm_then_compare(data: bytes, *warmers: bytes) -> None:
    expected = exact(data)
    for warmer in warmers:
        fast(warmer)
    assert fast(data) == expected
    assert fast(data) == expected  # every line, URI and head now found in the caches


def test_a_register_read_from_the_caches_is_the_register_read_anew() -> None:
    first = register(1)
    second = register(1, 'Digest username="u0001",realm="pbx.test",nonce="abc",'
                         'uri="sip:pbx.test",response="0123456789abcdef0123456789abcdef"')
    warm_then_compare(first, register(0))
    warm_then_compare(second, first)
    fast(second)
    assert "Max-Forwards: 70" in message_module._LINES
    assert "CSeq: 1 REGISTER" in message_module._LINES
    assert "REGISTER sip:pbx.test SIP/2.0" in message_module._REQUEST_LINES
    # Headers new in every request are not kept.
    assert not any(line.startswith(("Via:", "Authorization:"))
                   for line in (*message_module._LINES.new, *message_module._LINES.old))


@pytest.mark.parametrize("change", [
    (b"Max-Forwards: 70", b"Max-Forwards: 7\x010"),   # a control character in a known line...
    (b"Expires: 3600", b"Expires:\t3600"),              # a tab: the exact path takes it
    (b"REGISTER sip:pbx.test SIP/2.0", b"REGISTER  sip:pbx.test SIP/2.0"),
    (b"REGISTER sip:pbx.test SIP/2.0", b"REGISTER sip:pbx.test SIP/2.0\x00"),
    (b"REGISTER sip:pbx.test SIP/2.0", b"REGISTER sip:pbx.test SIP/3.0"),
    (b"Max-Forwards: 70", b"Max-Forwards 70"),          # no colon...
    (b"User-Agent: sipp", b"User-Agent: si\x7fpp"),     # ...before a DEL in a later line
    (b"To: <sip:u0001@pbx.test>", b"To: <sip:u0001@pbx.test>\r\n ;tag=folded"),
    (b"To: <sip:u0001@pbx.test>", b" <sip:u0001@pbx.test>"),
    (b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"),
    (b"Content-Length: 0", b"Content-Length: 0\r"),
    (b"Contact: <sip", "Contact: \"Zoë\" <sip".encode()),
])
def test_a_changed_line_is_read_as_the_exact_path_reads_it(change: tuple[bytes, bytes]) -> None:
    base = register(7)
    data = base.replace(*change)
    assert data != base
    # Every other line (and the line itself, unchanged) is already known.
    warm_then_compare(data, base)


def test_two_faults_are_named_in_the_order_of_the_exact_path() -> None:
    base = register(8)
    both = base.replace(b"Max-Forwards: 70", b"Max-Forwards 70").replace(
        b"User-Agent: sipp", b"User-Agent: s\x00ipp")
    warm_then_compare(both, base)
    assert fast(both)[1] == "control character in header section"
    start_and_control = base.replace(b"SIP/2.0\r\n", b"SIP/2.0 x\r\n", 1).replace(
        b"Expires: 3600", b"Expires: 36\x0200")
    warm_then_compare(start_and_control, base)
    assert fast(start_and_control)[1] == "control character in header section"


def test_long_lines_are_not_kept() -> None:
    long_agent = register(9).replace(b"User-Agent: sipp", b"User-Agent: " + b"x" * 300)
    fast(long_agent)
    assert not any(len(line) > 256
                   for line in (*message_module._LINES.new, *message_module._LINES.old))


@SETTINGS
@given(mutated())
def test_mutated_messages_read_alike_cold_and_warm(data: bytes) -> None:
    warm_then_compare(data)


@SETTINGS
@given(st.data())
def test_a_register_with_one_mutated_line_reads_alike(data: st.DataObject) -> None:
    base = register(3)
    lines = base.split(b"\r\n")
    index = data.draw(st.integers(0, len(lines) - 3))
    line = bytearray(lines[index])
    position = data.draw(st.integers(0, len(line)))
    line[position:position] = data.draw(st.sampled_from(
        [b"\t", b"\x00", b"\r", b"\n", b" ", b";", b":", b",", b"=", b"\"", b"<", b">",
         b"[", b"]", b"\xc3\xa9", b";x", b";x=", b"=y", b"\x7f"]))
    lines[index] = bytes(line)
    warm_then_compare(b"\r\n".join(lines), base)


# ------------------------------------------------------- Via and name-addr


def via_by_regex(value: str) -> Via:
    """`Via.parse` as it was before `_VIA_HEADS`: the whole value by `_SIMPLE_VIA`."""
    match = headers_module._SIMPLE_VIA.fullmatch(value)
    if match is not None:
        port = match[3]
        if port is not None and int(port) > 65535:
            raise SipParseError(f"bad port {port!r} in Via")
        return Via(transport=match[1].upper(), host=match[2],
                   port=None if port is None else int(port),
                   params=headers_module._simple_params(match[4]) if match[4] else ())
    return Via._parse_general(value)


def name_addr_by_regex(value: str) -> NameAddr:
    """`NameAddr.parse` as it was before `_NAME_ADDR_HEADS`."""
    match = headers_module._SIMPLE_NAME_ADDR.fullmatch(value)
    if match is not None and ":" in match[3]:
        quoted, token_name, uri_text, param_text = match.groups()
        if quoted is not None:
            display = (headers_module.unquote_string(f'"{quoted}"') if "\\" in quoted
                       else quoted)
        else:
            display = token_name or None
        return NameAddr(uri_text=uri_text, display_name=display,
                        params=headers_module._simple_params(param_text) if param_text else ())
    return NameAddr._parse_general(value, "From")


def outcome(parse: Any, value: str) -> Any:
    try:
        parsed = parse(value)
    except SipParseError as error:
        return ("error", error.reason, error.status)
    if isinstance(parsed, tuple):
        return parsed
    fields = ("transport", "host", "port", "params", "protocol") if isinstance(parsed, Via) \
        else ("uri_text", "display_name", "params", "is_star")
    return (type(parsed).__name__, *(getattr(parsed, name) for name in fields))


_PARAM_PIECES = st.lists(st.sampled_from(
    [";", "=", "branch", "z9hG4bK-1-2", "rport", "received", "[::1]", "[2001:db8::7]", "[zz]",
     "[", "]", "tag", "a.b", "x y", " ", "\t", '"q"', "%41", ",", "<", ">", "é", ":", "~'`!*+_"]),
    max_size=8).map("".join)
_VIA_HEADS = ["SIP/2.0/UDP 127.0.0.1:5061", "SIP/2.0/tcp [2001:db8::1]:5060",
              "SIP/2.0/UDP pbx.test", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h :5060",
              "SIP / 2.0 / UDP h", "SIP/2.0/UDP h;", "SIP/2.0/UDP"]
_NAME_ADDR_HEADS = ["<sip:1001@pbx.test>", '"Bob" <sip:b@c>', "Bob Smith <sip:b@c>",
                    '"a>b" <sip:a@b>', '"q\\"x" <sips:c@d;transport=tls>', "<tel:+1>",
                    "<nocolon>", "sip:a@b", "<sip:a@b>>", '"unterminated <sip:a@b>']


@SETTINGS
@given(st.sampled_from(_VIA_HEADS), _PARAM_PIECES)
def test_a_via_read_from_its_known_head_is_the_via_read_whole(head: str, params: str) -> None:
    value = head + params
    expected = outcome(via_by_regex, value)
    assert outcome(Via.parse, value) == expected
    outcome(Via.parse, head + ";branch=z9hG4bK-warm")  # the head is known now, if simple
    outcome(Via.parse, head)
    assert outcome(Via.parse, value) == expected


@SETTINGS
@given(st.sampled_from(_NAME_ADDR_HEADS), _PARAM_PIECES)
def test_a_name_addr_read_from_its_known_head_is_the_one_read_whole(
        head: str, params: str) -> None:
    value = head + params
    expected = outcome(name_addr_by_regex, value)
    assert outcome(lambda v: NameAddr.parse(v, "From"), value) == expected
    outcome(NameAddr.parse, head + ";tag=warm")
    outcome(NameAddr.parse, head)
    assert outcome(lambda v: NameAddr.parse(v, "From"), value) == expected


def test_known_heads_are_remembered_and_shared_values_never_handed_out() -> None:
    first = Via.parse("SIP/2.0/UDP 10.9.8.7:5060;branch=z9hG4bK-a;rport")
    second = Via.parse("SIP/2.0/UDP 10.9.8.7:5060;branch=z9hG4bK-b;received=[::1]")
    assert "SIP/2.0/UDP 10.9.8.7:5060" in headers_module._VIA_HEADS
    assert second.params == (("branch", "z9hG4bK-b"), ("received", "[::1]"))
    assert (second.transport, second.host, second.port) == ("UDP", "10.9.8.7", 5060)
    assert second is not headers_module._VIA_HEADS["SIP/2.0/UDP 10.9.8.7:5060"]
    assert first.params == (("branch", "z9hG4bK-a"), ("rport", None))
    one = NameAddr.parse('"Alice" <sip:alice@pbx.test>;tag=1')
    two = NameAddr.parse('"Alice" <sip:alice@pbx.test>;tag=2')
    assert '"Alice" <sip:alice@pbx.test>' in headers_module._NAME_ADDR_HEADS
    assert (two.uri_text, two.display_name, two.tag) == ("sip:alice@pbx.test", "Alice", "2")
    assert one.tag == "1"
    assert two is not headers_module._NAME_ADDR_HEADS['"Alice" <sip:alice@pbx.test>']


def test_the_token_table_is_the_token_grammar() -> None:
    token = re.compile(headers_module._TOKEN_CHARS)
    for code in range(128):
        assert (headers_module._TOKEN_TABLE[code] == "t") == bool(token.fullmatch(chr(code)))


def entry_by_partition(line: str) -> Any:
    """A header line's entry as `_parse_header_line` made it before it split with str.find."""
    name, colon, value = line.partition(": ")
    if not colon or ":" in name:
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without colon {line[:40]!r}")
    key, name = message_module._key_of(name)
    return (key, name, value.strip(" \t"), line)


@SETTINGS
@given(st.lists(st.sampled_from(
    ["Via", "v", "To", "X-Odd", " ", "\t", ":", ": ", "::", "a b", "x", "1", ";", "é"]),
    max_size=6).map("".join))
def test_a_header_line_splits_as_it_did_by_partition(line: str) -> None:
    assume(line[:1] not in (" ", "\t"))  # a fold: joined to the line above, not split
    assert outcome(lambda text: message_module._parse_header_line(text, [], False), line) \
        == outcome(entry_by_partition, line)
