"""Typed header values shared between messages parsed from the same text."""

from __future__ import annotations

import pytest

from pbx.sip import message as message_module
from pbx.sip.errors import SipParseError
from pbx.sip.message import Request, parse_message


def register(from_value: str, cseq: str = "1 REGISTER") -> Request:
    data = (
        "REGISTER sip:pbx.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
        f"From: {from_value}\r\n"
        "To: <sip:1001@pbx.test>\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: {cseq}\r\n"
        "Contact: <sip:1001@10.0.0.1:5060>;expires=60\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    return request


def test_the_same_text_gives_the_same_typed_value() -> None:
    first = register("<sip:1001@pbx.test>;tag=a")
    second = register("<sip:1001@pbx.test>;tag=a")
    assert second.from_addr is first.from_addr
    assert second.to_addr is first.to_addr
    assert second.contacts[0] is first.contacts[0]
    assert second.cseq is first.cseq
    assert register("<sip:1001@pbx.test>;tag=b").from_addr.tag == "b"


def test_a_bad_value_is_not_remembered_and_the_cache_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SipParseError):
        register("<sip:1001@pbx.test;tag=a")
    assert "<sip:1001@pbx.test;tag=a" not in message_module._NAME_ADDRS
    monkeypatch.setattr(message_module, "_PARSED_CACHE_SIZE", 3)
    for n in range(10):
        register(f"<sip:1001@pbx.test>;tag={n}")
        assert len(message_module._NAME_ADDRS.new) <= 3
    assert len(message_module._NAME_ADDRS.old) <= 3  # a generation ago: the small size too


def test_a_value_in_use_outlives_a_stream_of_new_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each REGISTER brings a new From (new tag) but the same To and Contact.
    monkeypatch.setattr(message_module, "_PARSED_CACHE_SIZE", 4)
    first = register("<sip:1001@pbx.test>;tag=first")
    for n in range(50):
        again = register(f"<sip:1001@pbx.test>;tag={n}")
        assert again.to_addr is first.to_addr
        assert again.contacts[0] is first.contacts[0]


@pytest.mark.parametrize("text", [
    "sip:1001@pbx.test", "sips:alice%40home@pbx.test;transport=tls", "sip:pbx.test",
    "tel:+15551234", "http://example.com/", "sip:", "sip:bob@", "<weird>",
])
def test_sip_user_of_an_address_is_user_of_its_uri_text(text: str) -> None:
    from pbx.sip.headers import NameAddr
    from pbx.sip.uri import user_of

    address = NameAddr(uri_text=text)
    assert address.sip_user == user_of(text)
    assert address.sip_user == user_of(text)  # the second time from the parsed URI
