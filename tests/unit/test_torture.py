"""Torture tests for the message parser, in the spirit of RFC 4475.

Every message is a file in ``tests/data/torture`` (the bytes of one
datagram); `CASES` below says what each must give:

- `Valid`: it parses, the typed values in ``expect`` come out, every typed
  view parses, and writing it back gives the same bytes (or, for the few
  messages we deliberately write differently, the bytes ``written`` says);
- `Invalid`: `SipParseError` with this status and ``answerable`` flag, and
  `make_error_response` answers it with that status (or not at all).

The files are written for this project, one fault per invalid file, most
made from the same plain INVITE so that the fault is the only difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pbx.sip.errors import SipParseError
from pbx.sip.headers import COMPACT_FORMS, canonical_name, header_key
from pbx.sip.message import (
    ParseLimits,
    Request,
    Response,
    make_error_response,
    parse_message,
)
from pbx.sip.uri import SipUri, TelUri, parse_uri
from tests.sipdata import TORTURE, load, typed_values


@dataclass(frozen=True)
class Valid:
    """A message that must parse.

    ``expect`` maps a path to a value: a dotted attribute path from the
    message (``vias.1.host``; digits index lists), ``header:Name`` for
    ``headers.get``, ``values:Name`` for ``headers.values``.
    ``written`` is what `to_bytes` must give, from the file's bytes; None
    means the same bytes back.
    """

    expect: dict[str, Any]
    written: Callable[[bytes], bytes] | None = None


@dataclass(frozen=True)
class Invalid:
    """A message that must raise `SipParseError` with this status.

    ``answer_parses`` is False where the request's own From, To, Call-ID or
    CSeq is missing or malformed: the stateless answer copies them as they
    are (RFC 3261 §8.2.6.2), so it fails to parse for the same reason; see
    `test_answer_is_no_worse_than_the_request`.
    """

    status: int
    answerable: bool
    reason: str = ""  # a fragment of SipParseError.reason
    answer_parses: bool = True


def _crlf_everywhere(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def _cut_body(length: int) -> Callable[[bytes], bytes]:
    def cut(data: bytes) -> bytes:
        head, _, body = data.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n" + body[:length]
    return cut


def _content_length_added(data: bytes) -> bytes:
    head, _, body = data.partition(b"\r\n\r\n")
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def _repeated_length_dropped(data: bytes) -> bytes:
    return data.replace(b"\r\nl: %d\r\n" % SDP_LENGTH, b"\r\n")


def _version_upper(data: bytes) -> bytes:
    start, _, rest = data.partition(b"\r\n")
    return start.replace(b"sip/2.0", b"SIP/2.0") + b"\r\n" + rest


SDP_LENGTH = 118

CASES: dict[str, Valid | Invalid] = {
    # ------------------------------------------------------------ valid
    # Whitespace everywhere the grammar allows it: `TO :`, folds inside
    # values and parameters, LWS around "/" in the sent-protocol and around
    # ";" and "=", an escaped backslash and quote in a display name, a Via
    # list on folded lines, leading zeros, an unknown header with a strange
    # value, and a body.
    "valid_wsinv": Valid({
        "method": "INVITE",
        "uri.user": "vivekg",
        "uri.params": (("unknownparam", None),),
        "to_addr.display_name": None,
        "to_addr.uri_text": "sip:vivekg@chair-dnrc.example.com",
        "to_addr.tag": "1918181833n",
        "from_addr.display_name": 'J Rosenberg \\"',
        "from_addr.tag": "98asjd8",
        "max_forwards": 68,
        "cseq.number": 9,
        "cseq.method": "INVITE",
        "content_length": SDP_LENGTH,
        "vias.0.protocol": "SIP/2.0",
        "vias.0.transport": "UDP",
        "vias.0.host": "192.0.2.2",
        "vias.0.port": None,
        "vias.0.branch": "390skdjuw",
        "vias.0.wants_rport": True,
        "vias.0.rport": None,
        "vias.1.transport": "TCP",
        "vias.1.host": "spindle.example.com",
        "vias.1.branch": "z9hG4bK9ikj8",
        "vias.2.transport": "UDP",
        "vias.2.host": "192.168.255.111",
        "vias.2.branch": "z9hG4bK30239",
        "header:Subject": "",
        "header:NewFangledHeader": "newfangled value continued newfangled value",
        "header:UnknownHeaderWithUnusualValue": ";;,,;;,;",
        "contacts.0.display_name": 'Quoted string ""',
        "contacts.0.uri_text": "sip:jdrosen@example.com",
        "contacts.0.q": 0.33,
        "contacts.0.params": (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")),
        "routes.0.uri_text": "sip:services.example.com;lr;unknownwith=value;unknown-no-value",
        "content_type.value": "application/sdp",
    }),
    # All seventeen compact forms (RFC 3261 §7.3.3 and later RFCs).
    "valid_compact_forms": Valid({
        "method": "NOTIFY",
        "uri.port": 5062,
        "top_via.branch": "z9hG4bKcompact1",
        "from_addr.tag": "ffa11",
        "to_addr.tag": "aab22",
        "call_id": "compact-forms@pres.example.com",
        "contacts.0.uri_text": "sip:pres@pres.example.com",
        "event.package": "presence",
        "event.id": "4",
        "values:Allow-Events": ["presence", "dialog"],
        "supported": ["timer", "100rel"],
        "header:Subject": "every compact form",
        "header:Refer-To": "<sip:carol@chicago.example.com>",
        "header:Referred-By": "<sip:bob@biloxi.example.com>",
        "header:Session-Expires": "1800;refresher=uac",
        "header:Identity": '"c2lnbmF0dXJl";info=<https://cert.example.com/c.pem>',
        "header:Accept-Contact": "*;audio",
        "header:Content-Encoding": "identity",
        "subscription_state.state": "active",
        "subscription_state.expires": 600,
        "content_type.value": "application/pidf+xml",
        "content_length": 108,
    }),
    "valid_mixed_case_names": Valid({
        "method": "OPTIONS",
        "top_via.branch": "z9hG4bKmixed1",
        "max_forwards": 70,
        "from_addr.tag": "mixed1",
        "call_id": "mixed-case@atlanta.example.com",
        "cseq.number": 8,
        "contacts.0.uri_text": "sip:alice@client.atlanta.example.com",
        "header:accept": "application/sdp",
        "content_length": 0,
    }),
    # Folded lines, with SP and with HTAB, in Via, Max-Forwards, From, CSeq...
    "valid_folded": Valid({
        "method": "MESSAGE",
        "top_via.transport": "TCP",
        "top_via.port": 5060,
        "top_via.branch": "z9hG4bKfold1",
        "max_forwards": 70,
        "from_addr.display_name": "Alice",
        "from_addr.tag": "fold1",
        "to_addr.uri_text": "sip:bob@biloxi.example.com",
        "cseq.method": "MESSAGE",
        "header:Subject": "a subject that is folded over three lines",
        "body": b"Watson, come here.\r\n",
    }),
    # HTAB around ":" of the header, "/" of the sent-protocol, ":" of the
    # sent-by (COLON = SWS ":" SWS), ";" and "=" of the parameters.
    "valid_tabs_and_lws": Valid({
        "top_via.transport": "UDP",
        "top_via.host": "client.atlanta.example.com",
        "top_via.port": 5060,
        "top_via.branch": "z9hG4bKtabs1",
        "from_addr.display_name": "Alice",
        "from_addr.tag": "tabs1",
        "call_id": "tabs@atlanta.example.com",
        "cseq.number": 3,
        "content_length": 0,
    }),
    # Escapes in the user part; see test_escaped_uri_equality.
    "valid_escaped_uri": Valid({
        "uri.user": "sips%3Auser%40example.com",
        "uri.host": "example.net",
        "uri.transport": "udp",
        "to_addr.uri.user": "%73ips%3auser%40example.com",
        "to_addr.uri.host": "EXAMPLE.NET",
    }),
    # user = "user;par=u%40example.net": ";" is user-unreserved.
    "valid_escaped_user_semicolon": Valid({
        "uri.user": "user;par=u%40example.net",
        "uri.host": "example.com",
        "uri.params": (),
        "to_addr.uri.user": "user;par=u%40example.net",
    }),
    "valid_escaped_nulls_in_uri": Valid({
        "method": "REGISTER",
        "to_addr.uri.user": "null-%00-null",
        "contacts.0.uri.user": "%00",
        "contacts.1.uri.user": "%00%00",
        "expires": 3600,
    }),
    "valid_quoted_display": Valid({
        "from_addr.display_name": 'Bob "the" \\ Builder',
        "from_addr.uri.user": "bob",
        "from_addr.tag": "quote1",
        "to_addr.display_name": "\\",
    }),
    # UTF-8 in display names, Subject, body; an escaped UTF-8 user part.
    "valid_utf8": Valid({
        "uri.user": "j%C3%BCrgen",
        "from_addr.display_name": "Jürgen Groß",
        "to_addr.display_name": "Ангелина",
        "header:Subject": "Grüße aus München ☎",
        "content_type.param('charset')": "utf-8",
        "body": "Grüß Gott\r\n".encode(),
    }),
    # Commas inside quoted display names; several Contacts on one line,
    # one without a blank after the comma; an addr-spec Contact whose
    # parameters belong to the header (§20.10).
    "valid_comma_in_display": Valid({
        "from_addr.display_name": "Doe, John",
        "to_addr.display_name": "Doe, John",
        "contacts.0.display_name": "Doe, John",
        "contacts.0.q": 0.9,
        "contacts.1.display_name": 'Roe, "Jane"',
        "contacts.1.uri_text": "sip:jane@b.example.com",
        "contacts.1.q": 0.5,
        "contacts.1.expires": 60,
        "contacts.2.display_name": None,
        "contacts.2.uri_text": "sip:c@c.example.com",
        "contacts.3.uri_text": "sip:d@d.example.com",
        "contacts.3.expires": 120,
        "contacts.3.params": (("expires", "120"),),
    }),
    "valid_multi_via_line": Valid({
        "status": 200,
        "vias.0.host": "proxy2.example.com",
        "vias.0.port": 5060,
        "vias.0.received": "192.0.2.3",
        "vias.1.transport": "TCP",
        "vias.1.host": "proxy1.example.com",
        "vias.1.branch": "z9hG4bKmv2",
        "vias.2.port": 5070,
        "vias.2.rport": 5071,
        "vias.2.received": "192.0.2.1",
        "top_via.branch": "z9hG4bKmv3",
        "values:Via": [
            "SIP/2.0/UDP proxy2.example.com:5060;branch=z9hG4bKmv3;received=192.0.2.3",
            "SIP/2.0/TCP proxy1.example.com;branch=z9hG4bKmv2",
            "SIP/2.0/UDP client.example.com:5070;branch=z9hG4bKmv1;rport=5071;received=192.0.2.1",
        ],
    }),
    # IPv6 references (RFC 5118): Request-URI, Via sent-by, received with
    # and without brackets, From, To, Contact, Call-ID.
    "valid_ipv6": Valid({
        "uri.host": "[2001:db8::10]",
        "uri.port": 5070,
        "uri.transport": "udp",
        "vias.0.host": "[2001:db8::9]",
        "vias.0.port": 5060,
        "vias.0.received": "[2001:db8::9:255]",
        "vias.0.rport": 5060,
        "vias.1.host": "[2001:db8::1]",
        "vias.1.port": None,
        "vias.1.received": "2001:db8::1:1",
        "from_addr.uri.host": "[2001:db8::1]",
        "contacts.0.uri.host": "[2001:db8::1]",
        "contacts.0.uri.port": 5060,
        "call_id": "ipv6@[2001:db8::1]",
    }),
    "valid_ipv4_mapped_ipv6": Valid({
        "uri.user": None,
        "uri.host": "[::ffff:192.0.2.128]",
        "top_via.host": "[::ffff:192.0.2.2]",
    }),
    # An unknown method made of every token character, a user part full of
    # user-unreserved characters and a password, a quoted display name with
    # escaped BEL, NUL, DEL and TAB (legal quoted-pairs), a token display
    # name, a quoted parameter value, an odd Call-ID and header name.
    "valid_unknown_method": Valid({
        "method": "!interesting-Method0123456789_*+`.%indeed'~",
        "uri.user": "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
        "uri.password": "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)",
        "uri.host": "example.com",
        "uri.headers": (),
        "to_addr.display_name": "BEL:\x07 NUL:\x00 DEL:\x7f TAB:\t",
        "to_addr.uri.user": "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
        "from_addr.display_name": "token1~` token2'+_ token3*%!.-",
        "from_addr.tag": "_token~1'+`*%!-.",
        "from_addr.params": (
            ("fromParam''~+*_!.-%",
             '"\\u0440\\u0430\\u0431\\u043e\\u0442\\u0430\\u044e\\u0449\\u0438\\u0439"'),
            ("tag", "_token~1'+`*%!-."),
        ),
        "call_id": "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        "cseq.number": 139122385,
        "cseq.method": "!interesting-Method0123456789_*+`.%indeed'~",
        "max_forwards": 255,
        "top_via.branch": "z9hG4bK-.!%66*_+`'~",
        "header:extensionHeader-!.%*+_`'~": "proxy-authenticate-like value",
    }),
    "valid_unknown_headers": Valid({
        "header:X-Empty": "",
        "header:X-Spaces": "value with   inner   spaces",
        "values:X-Repeated": ["one", "two, three"],
        "header:P-Weird-Characters": '<>@,;:\\"/[]?={} and ~`!#$%^&*()',
    }),
    # tel: Request-URI and To (RFC 3966); see test_tel_uri_equality.
    "valid_tel_uri": Valid({
        "uri.number": "+1-201-555-0123",
        "uri.is_global": True,
        "uri.param('ext')": "4567",
        "to_addr.uri.digits": "+12015550123",
        "from_addr.uri.number": "+1.201.555.0100",
        "contacts.0.uri.param('user')": "phone",
    }),
    "valid_tel_local": Valid({
        "uri.number": "7042",
        "uri.is_global": False,
        "uri.param('phone-context')": "example.com",
    }),
    # Contact: * with Expires: 0, removing every binding (RFC 3261 §10.2.2).
    "valid_register_star": Valid({
        "method": "REGISTER",
        "uri.user": None,
        "contacts.0.is_star": True,
        "expires": 0,
        "cseq.number": 22,
    }),
    # SIP-Version is case-insensitive (RFC 3261 §7.1) but we MUST send it
    # upper-case: the start line is written "SIP/2.0", the Via line as it came.
    "valid_lowercase_version": Valid({
        "method": "OPTIONS",
        "top_via.transport": "UDP",
        "top_via.branch": "z9hG4bKlower1",
    }, written=_version_upper),
    # No Content-Length on UDP: the body is the rest of the datagram
    # (RFC 3261 §18.3); written back with the header added.
    "valid_body_without_content_length": Valid({
        "content_length": None,
        "content_type.value": "application/sdp",
        "body.__len__()": SDP_LENGTH,
    }, written=_content_length_added),
    # More bytes than Content-Length: the excess is dropped (§18.3).
    "valid_body_longer_than_content_length": Valid({
        "content_length": 20,
        "body": b"v=0\r\no=torture 1 1 I",
    }, written=_cut_body(20)),
    # The same length twice (here full and compact): no ambiguity, taken as
    # one and written back once (RFC 7230 §3.3.2 lets HTTP do the same).
    "valid_content_length_twice_same": Valid({
        "content_length": SDP_LENGTH,
        "body.__len__()": SDP_LENGTH,
    }, written=_repeated_length_dropped),
    "valid_empty_reason": Valid({"status": 200, "reason": ""}),
    "valid_unusual_reason": Valid({
        "status": 499,
        "reason": "Wörks  fine: with spaces, ☺ and\\stuff",
    }),
    # URI parameters and headers, sips:, Route lists, Via maddr/ttl/rport.
    "valid_uri_headers_and_params": Valid({
        "method": "REFER",
        "uri.transport": "tcp",
        "uri.param('maddr')": "192.0.2.4",
        "uri.param('ttl')": "5",
        "uri.param('lr')": "",
        "top_via.transport": "TLS",
        "top_via.port": 5061,
        "top_via.maddr": "224.2.0.1",
        "top_via.ttl": 16,
        "top_via.wants_rport": True,
        "top_via.rport": None,
        "from_addr.uri.scheme": "sips",
        "cseq.number": 93809823,
        "contacts.0.uri.scheme": "sips",
        "contacts.0.uri.port": 5061,
        "routes.0.uri.host": "p1.example.com",
        "routes.1.uri.port": 5070,
        "routes.1.uri.transport": "tcp",
        "record_routes.0.uri.param('lr')": "",
    }),
    # LWS around ";" and "=", LWS after the last "/" and around the port's ":".
    "valid_semicolon_lws_params": Valid({
        "vias.0.transport": "UDP",
        "vias.0.host": "192.0.2.1",
        "vias.0.branch": "z9hG4bKsemiws",
        "vias.0.received": "192.0.2.1",
        "vias.1.transport": "TCP",
        "vias.1.host": "[2001:db8::1]",
        "vias.1.port": 5061,
        "vias.1.branch": "z9hG4bKsemiws0",
        "from_addr.tag": "aa11",
        "to_addr.tag": "bb22",
    }),
    "valid_response_to_register": Valid({
        "status": 200,
        "top_via.rport": 41234,
        "top_via.received": "192.0.2.201",
        "contacts.0.expires": 3600,
        "contacts.0.q": 1.0,
        "contacts.1.expires": 0,
        "header:Date": "Sat, 13 Nov 2010 23:29:00 GMT",
    }),
    # Bare LF line ends (and a fold), tolerated as many stacks do; written
    # back with CRLF.
    "valid_bare_lf": Valid({
        "method": "OPTIONS",
        "top_via.branch": "z9hG4bKlf1",
        "cseq.method": "OPTIONS",
        "content_length": 0,
    }, written=_crlf_everywhere),
    # ---------------------------------------------------------- invalid
    # Another SIP version: 505 Version Not Supported (RFC 3261 §21.5.6).
    "invalid_badvers": Invalid(505, True, "version"),
    "invalid_badvers_response": Invalid(505, False, "version"),
    # A Request-URI scheme we do not know: 416 (RFC 3261 §8.2.2.1).
    "invalid_unknown_scheme": Invalid(416, True, "scheme"),
    "invalid_ruri_in_angles": Invalid(400, True, "URI"),
    # Content-Length beyond the datagram (RFC 3261 §18.3): 400.
    "invalid_content_length_larger": Invalid(400, True, "Content-Length"),
    "invalid_content_length_negative": Invalid(400, True, "Content-Length"),
    "invalid_content_length_nonnumeric": Invalid(400, True, "Content-Length"),
    # Two lengths that disagree, as two lines or as a list on one: two places
    # where the body may end, the ambiguity a smuggled request hides in.
    "invalid_content_length_twice": Invalid(400, True, "two different Content-Length"),
    "invalid_content_length_compact_disagrees": Invalid(
        400, True, "two different Content-Length"),
    "invalid_content_length_list": Invalid(400, True, "Content-Length"),
    # CSeq "MUST be less than 2**31" (§8.1.1.5); its method is the request's.
    "invalid_cseq_2_31": Invalid(400, True, "CSeq", answer_parses=False),
    "invalid_cseq_method_mismatch": Invalid(400, True, "CSeq method"),
    "invalid_cseq_no_method": Invalid(400, True, "CSeq", answer_parses=False),
    # Max-Forwards is 0-255 (§20.22).
    "invalid_max_forwards_overlarge": Invalid(400, True, "Max-Forwards"),
    # The mandatory headers (§8.1.1).
    "invalid_missing_call_id": Invalid(400, True, "Call-ID", answer_parses=False),
    "invalid_missing_from": Invalid(400, True, "From", answer_parses=False),
    "invalid_missing_to": Invalid(400, True, "To", answer_parses=False),
    "invalid_missing_cseq": Invalid(400, True, "CSeq", answer_parses=False),
    # Without a usable Via no response can be routed (§18.2.1): dropped.
    "invalid_missing_via": Invalid(400, False, "Via"),
    "invalid_bad_via": Invalid(400, False, "host"),
    "invalid_via_no_protocol": Invalid(400, False, "sent-protocol"),
    "invalid_via_port_99999": Invalid(400, False, "port"),
    "invalid_ruri_port_99999": Invalid(400, True, "port"),
    "invalid_unterminated_quote": Invalid(400, True, "From", answer_parses=False),
    "invalid_lt_without_gt": Invalid(400, True, "To", answer_parses=False),
    "invalid_display_without_angles": Invalid(400, True, "To", answer_parses=False),
    "invalid_ipv6_unterminated": Invalid(400, True, "IPv6"),
    "invalid_header_without_colon": Invalid(400, True, "colon"),
    "invalid_header_name_with_space": Invalid(400, True, "header name"),
    # Header text is UTF-8 without control characters (TEXT-UTF8, §25.1).
    "invalid_non_utf8_header": Invalid(400, True, "UTF-8"),
    "invalid_nul_in_header": Invalid(400, True, "control"),
    "invalid_nul_in_call_id": Invalid(400, True, "control", answer_parses=False),
    # Responses are never answered (§18.1.2 drops what cannot be matched).
    "invalid_status_garbage": Invalid(400, False, "status code"),
    "invalid_status_four_digits": Invalid(400, False, "status code"),
    "invalid_response_without_via": Invalid(400, False, "Via"),
    # Not a SIP start line at all: nothing to answer.
    "invalid_garbage_start_line": Invalid(400, False, "request line"),
    "invalid_method_not_token": Invalid(400, False, "method"),
    # Limits [h11]: 101 header lines; a datagram over 64 KiB.
    "invalid_too_many_headers": Invalid(513, True, "headers"),
    "invalid_too_large": Invalid(513, False),
}

VALID = sorted(name for name, case in CASES.items() if isinstance(case, Valid))
INVALID = sorted(name for name, case in CASES.items() if isinstance(case, Invalid))


def _valid(name: str) -> Valid:
    case = CASES[name]
    assert isinstance(case, Valid)
    return case


def _invalid(name: str) -> Invalid:
    case = CASES[name]
    assert isinstance(case, Invalid)
    return case


def torture(name: str) -> bytes:
    return load(TORTURE / f"{name}.sip")


def resolve(message: Request | Response, path: str) -> Any:
    """The value at a `Valid.expect` path."""
    if path.startswith("header:"):
        return message.headers.get(path.removeprefix("header:"))
    if path.startswith("values:"):
        return message.headers.values(path.removeprefix("values:"))
    value: Any = message
    for part in path.split("."):
        if part.isdigit():
            value = value[int(part)]
        elif part.endswith(")"):
            name, _, argument = part[:-1].partition("(")
            value = getattr(value, name)(*([argument.strip("'")] if argument else []))
        else:
            value = getattr(value, part)
    return value


def every_typed_view(message: Request | Response) -> None:
    """Read every typed view and every lazily parsed URI: none may raise."""
    for name in (
        "vias", "top_via", "from_addr", "to_addr", "call_id", "cseq", "contacts", "routes",
        "record_routes", "reply_to", "max_forwards", "content_length", "content_type",
        "expires", "require", "proxy_require", "supported", "unsupported", "allow",
        "event", "subscription_state",
    ):
        getattr(message, name)
    for addr in [message.from_addr, message.to_addr, *message.contacts, *message.routes,
                 *message.record_routes]:
        if not addr.is_star:
            addr.uri  # noqa: B018 - parsing it is the check
        addr.q  # noqa: B018
    if isinstance(message, Request):
        message.uri  # noqa: B018


def test_table_covers_every_file() -> None:
    on_disk = sorted(path.stem for path in TORTURE.glob("*.sip"))
    assert on_disk == sorted(CASES)
    assert len(CASES) >= 40
    assert all(name.startswith("valid_") for name in VALID)
    assert all(name.startswith("invalid_") for name in INVALID)


# ---------------------------------------------------------------- valid


@pytest.mark.parametrize("name", VALID)
def test_valid_typed_values(name: str) -> None:
    case = _valid(name)
    message = parse_message(torture(name))
    every_typed_view(message)
    got = {path: resolve(message, path) for path in case.expect}
    assert got == case.expect


@pytest.mark.parametrize("name", VALID)
def test_valid_round_trip(name: str) -> None:
    case = _valid(name)
    data = torture(name)
    message = parse_message(data)
    written = message.to_bytes()
    assert written == (data if case.written is None else case.written(data))
    again = parse_message(written)
    assert typed_values(again) == typed_values(message)
    every_typed_view(again)
    assert again.to_bytes() == written


def test_round_trip_exact_for_most() -> None:
    """Byte-exact wherever Content-Length is right and the line ends are CRLF."""
    exact = [name for name in VALID if _valid(name).written is None]
    assert len(exact) >= 20


def test_compact_forms_every_letter() -> None:
    """i m e l c f s k t v o u r b x y a: each is found under its full name."""
    message = parse_message(torture("valid_compact_forms"))
    written_names = {name for name, _ in message.headers}
    assert set(COMPACT_FORMS) <= written_names
    for letter, full in COMPACT_FORMS.items():
        assert header_key(letter) == full
        assert message.headers.get(canonical_name(full)) is not None, full
        assert message.headers.get(full) == message.headers.get(letter)


def test_wsinv_values_are_unfolded_but_lines_kept() -> None:
    data = torture("valid_wsinv")
    message = parse_message(data)
    assert message.headers.values("via")[1:] == [
        "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8",
        "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
    ]
    assert b"Content-Length   : 118\r\n" in message.to_bytes()


def test_escaped_uri_equality() -> None:
    """RFC 3261 §19.1.4: escapes of unreserved characters equal the characters,
    hex case does not matter, the host and parameters are case-insensitive;
    an escaped reserved character is not the bare character."""
    message = parse_message(torture("valid_escaped_uri"))
    assert isinstance(message, Request)
    assert message.uri == message.to_addr.uri
    assert hash(message.uri) == hash(message.to_addr.uri)
    assert parse_uri("sip:%61lice@atlanta.com;transport=TCP") == parse_uri(
        "sip:alice@AtLanTa.CoM;Transport=tcp")
    assert parse_uri("sip:alice@atlanta.com") != parse_uri("sip:ALICE@atlanta.com")
    assert parse_uri("sip:user%3bx@h") == parse_uri("sip:user%3Bx@h")
    assert parse_uri("sip:user%3Bx@h") != parse_uri("sip:user;x@h")
    assert parse_uri("sip:%FF@h") != parse_uri("sip:%FE@h")
    semicolon = parse_message(torture("valid_escaped_user_semicolon"))
    assert isinstance(semicolon, Request)
    assert semicolon.uri == semicolon.to_addr.uri
    assert semicolon.uri != parse_uri("sip:user%3Bpar=u%40example.net@example.com")


def test_escaped_nul_users_differ() -> None:
    message = parse_message(torture("valid_escaped_nulls_in_uri"))
    first, second = (c.uri for c in message.contacts)
    assert first != second
    assert message.to_addr.uri == message.from_addr.uri


def test_tel_uri_equality() -> None:
    """RFC 3966 §4: visual separators do not count; parameters must match."""
    message = parse_message(torture("valid_tel_uri"))
    assert isinstance(message, Request)
    assert isinstance(message.uri, TelUri)
    assert message.uri == message.to_addr.uri
    assert message.uri != parse_uri("tel:+12015550123")
    assert parse_uri("tel:+1-201-555-0100") == message.from_addr.uri


def test_ipv6_contact_is_a_sip_uri() -> None:
    message = parse_message(torture("valid_ipv6"))
    contact = message.contacts[0].uri
    assert isinstance(contact, SipUri)
    assert contact == parse_uri("sip:alice@[2001:db8::1]:5060;transport=UDP")


def test_unknown_headers_kept_verbatim() -> None:
    data = torture("valid_unknown_headers")
    message = parse_message(data)
    names = [name for name, _ in message.headers]
    assert names.count("X-Repeated") == 2
    for line in (b"X-Empty:\r\n", b"X-Spaces:    value with   inner   spaces\r\n",
                 b"P-Weird-Characters: <>@,;:\\\"/[]?={} and ~`!#$%^&*()\r\n"):
        assert line in message.to_bytes()


def test_edited_header_is_rewritten_others_kept() -> None:
    data = torture("valid_wsinv")
    message = parse_message(data)
    message.headers.set("Max-Forwards", "67")
    written = message.to_bytes()
    assert b"MaX-fOrWaRdS: 67\r\n" in written
    assert written.replace(b"MaX-fOrWaRdS: 67", b"MaX-fOrWaRdS: 0068") == data


def test_stream_needs_content_length() -> None:
    """On a stream a missing Content-Length is an error (RFC 3261 §18.3)."""
    data = torture("valid_body_without_content_length")
    with pytest.raises(SipParseError) as info:
        parse_message(data, datagram=False)
    assert info.value.status == 400


def test_header_limit_is_exactly_100() -> None:
    data = torture("invalid_too_many_headers")
    one_less = data.replace(b"X-Filler-0: 0\r\n", b"")
    assert parse_message(one_less).headers.get("X-Filler-91") == "91"
    with pytest.raises(SipParseError) as info:
        parse_message(one_less, limits=ParseLimits(max_headers=99))
    assert info.value.status == 513


def test_size_limit_is_exactly_the_limit() -> None:
    data = torture("invalid_too_large")
    message = parse_message(data, limits=ParseLimits(max_message_bytes=len(data)))
    assert len(message.headers.get("X-Big") or "") == 66000
    with pytest.raises(SipParseError) as info:
        parse_message(data, limits=ParseLimits(max_message_bytes=len(data) - 1))
    assert info.value.status == 513


def test_ack_errors_are_never_answered() -> None:
    """An ACK gets no response (RFC 3261 §17), however broken it is."""
    for name in ("invalid_content_length_larger", "invalid_missing_call_id",
                 "invalid_nul_in_header", "invalid_ruri_port_99999"):
        data = torture(name).replace(b"INVITE", b"ACK")
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        assert not info.value.answerable, name
        assert make_error_response(data, info.value, to_tag="x") is None


def test_folded_via_is_usable_for_the_answer() -> None:
    """A broken request whose Via is folded can still be answered, branch and all."""
    data = torture("valid_wsinv").replace(b"cseq: 0009\r\n  INVITE", b"cseq: 0009\r\n  BYE")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.answerable
    answer = make_error_response(data, info.value, to_tag="x")
    assert answer is not None
    response = parse_message(answer)
    assert isinstance(response, Response)
    assert response.status == 400
    assert [v.branch for v in response.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert response.to_addr.tag == "1918181833n"  # the To had a tag: kept, not doubled


# -------------------------------------------------------------- invalid


def _parse_error(data: bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


@pytest.mark.parametrize("name", INVALID)
def test_invalid_status_and_answerable(name: str) -> None:
    case = _invalid(name)
    error = _parse_error(torture(name))
    assert (error.status, error.answerable) == (case.status, case.answerable)
    assert case.reason in error.reason


@pytest.mark.parametrize("name", INVALID)
def test_invalid_error_response(name: str) -> None:
    case = _invalid(name)
    data = torture(name)
    error = _parse_error(data)
    answer = make_error_response(data, error, to_tag="x")
    if not case.answerable:
        assert answer is None
        return
    assert answer is not None
    assert answer.startswith(b"SIP/2.0 %d " % case.status)
    assert answer.endswith(b"\r\nContent-Length: 0\r\n\r\n")
    # The Via lines go back as they came, so the answer routes and matches.
    via_lines = [line for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")
                 if line.lower().startswith(b"via:")]
    assert via_lines
    assert all(line in answer.split(b"\r\n") for line in via_lines)
    if case.answer_parses:
        response = parse_message(answer)
        assert isinstance(response, Response)
        assert response.status == case.status
        assert response.to_addr.tag is not None
        assert response.call_id == _raw_call_id(data)


def _raw_call_id(data: bytes) -> str:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if header_key(name.strip().decode(errors="replace")) == "call-id":
            return value.strip().decode()
    raise AssertionError("no Call-ID")


@pytest.mark.parametrize("name", [n for n in INVALID if not _invalid(n).answer_parses])
def test_answer_is_no_worse_than_the_request(name: str) -> None:
    """Where the request's own From/To/Call-ID/CSeq is missing or broken, the
    answer copies it as it is (§8.2.6.2) and fails for the same reason."""
    data = torture(name)
    error = _parse_error(data)
    answer = make_error_response(data, error, to_tag="x")
    assert answer is not None
    with pytest.raises(SipParseError) as info:
        parse_message(answer)
    assert info.value.reason == error.reason


# ------------------------------------------------- found while writing these


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Content-Length: 0", "Content-Length: ²".encode()),
        (b"Content-Length: 0", "Content-Length: \u0660".encode()),  # ARABIC-INDIC ZERO
        (b"CSeq: 1 OPTIONS", "CSeq: ¹ OPTIONS".encode()),
        (b"Max-Forwards: 70", "Max-Forwards: ⁷⁰".encode()),
        (b"client.atlanta.example.com;", "client.atlanta.example.com:⁵⁰⁶⁰;".encode()),
        (b"sip:bob@biloxi.example.com SIP", "sip:bob@biloxi.example.com:⁵ SIP".encode()),
    ],
)
def test_non_ascii_digits_are_not_digits(old: bytes, new: bytes) -> None:
    """DIGIT is %x30-39: "²" made int() raise ValueError, an Arabic-Indic 0 was read as 0."""
    data = torture("valid_lowercase_version").replace(b"sip/2.0", b"SIP/2.0")
    assert old in data
    error = _parse_error(data.replace(old, new))
    assert error.status == 400


def test_non_ascii_digits_in_status_and_lazy_views() -> None:
    response = torture("valid_empty_reason")
    error = _parse_error(response.replace(b"SIP/2.0 200 ", "SIP/2.0 ²⁰⁰ OK".encode()))
    assert (error.status, error.answerable) == (400, False)
    message = parse_message(torture("valid_multi_via_line").replace(
        b"rport=5071", "rport=⁵⁰⁷¹;ttl=¹".encode()))
    assert message.vias[2].rport is None
    assert message.vias[2].ttl is None
    contact = parse_message(torture("valid_comma_in_display").replace(
        b"expires=60", "expires=⁶⁰".encode()))
    assert contact.contacts[1].expires is None


def test_crlf_message_without_the_blank_line() -> None:
    """A header-only datagram missing its final CRLF: its lines are still CRLF lines."""
    data = torture("valid_mixed_case_names")
    message = parse_message(data[:-2])
    assert message.call_id == "mixed-case@atlanta.example.com"
    assert message.to_bytes() == data
