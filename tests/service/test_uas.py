"""The RFC 3261 §8.2 rules, as a phone sees them on the wire."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.service.sipclient import header_params, new_branch, parse_reply

ALLOW = {"REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "INFO", "MESSAGE",
         "PRACK", "REFER"}  # REFER: a call's goes to the dialplan (issue 21)


def tokens(value: str | None) -> set[str]:
    return {token.strip() for token in (value or "").split(",") if token.strip()}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_options_is_answered_with_capabilities(pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)

    reply = await phone.request("OPTIONS")

    assert reply.status == 200
    assert tokens(reply.get("Allow")) == ALLOW
    assert tokens(reply.get("Accept")) == {"application/sdp"}
    assert "Supported" in reply
    assert reply.get("Server") == "pbx/0.1"
    assert reply.to_tag


@pytest_twisted.ensureDeferred
async def test_unknown_method_is_501_with_allow(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.request("FOO")

    assert reply.status == 501
    assert tokens(reply.get("Allow")) == ALLOW


@pytest_twisted.ensureDeferred
async def test_invite_without_credentials_is_challenged_with_407(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    branch = new_branch()

    reply = await phone.request("INVITE", branch=branch, to_user="1002",
                                request_uri="sip:1002@pbx.test")

    # A call is authenticated like a proxy would (RFC 3261 §22.3).
    assert reply.status == 407
    assert "www-authenticate" not in reply
    assert reply.get("Proxy-Authenticate").startswith("Digest ")
    # The phone ACKs the failure in the same transaction; nothing answers the ACK.
    phone.link.send(phone.build("ACK", branch=branch, to_user="1002", to_tag=reply.to_tag,
                                cseq=phone.cseq, request_uri="sip:1002@pbx.test"))
    await phone.link.silence(0.6)  # and the 407 is not retransmitted (Timer G, T1=0.5 s)


@pytest_twisted.ensureDeferred
async def test_require_of_an_unknown_extension_is_420(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.request("REGISTER", contacts=[f"<{phone.contact_uri}>"],
                                headers=[("Require", "foo")])

    assert reply.status == 420
    assert reply.get("Unsupported") == "foo"


@pytest_twisted.ensureDeferred
async def test_body_of_a_type_not_understood_is_415_with_accept(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.request("OPTIONS", body=b"hello", content_type="text/plain")

    assert reply.status == 415
    assert tokens(reply.get("Accept")) == {"application/sdp"}


@pytest_twisted.ensureDeferred
async def test_bye_in_an_unknown_dialog_is_481(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.request("BYE", to_user="1002", to_tag="a1b2c3",
                                request_uri="sip:1002@pbx.test")

    assert reply.status == 481
    assert reply.to_tag == "a1b2c3"


@pytest_twisted.ensureDeferred
async def test_cancel_matching_nothing_is_481(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    reply = await phone.request("CANCEL", to_user="1002", request_uri="sip:1002@pbx.test")

    assert reply.status == 481


@pytest_twisted.ensureDeferred
async def test_stray_ack_gets_no_answer(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")

    phone.link.send(phone.build("ACK", to_user="1002", to_tag="x1",
                                request_uri="sip:1002@pbx.test"))

    await phone.link.silence(0.5)
    assert (await phone.request("OPTIONS")).status == 200  # still there


@pytest_twisted.ensureDeferred
async def test_unsolicited_response_gets_no_answer(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    link = await pbx.link("udp")
    response = (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{pbx.address('udp')[1]};branch={new_branch()}\r\n"
        "From: <sip:1001@pbx.test>;tag=1\r\nTo: <sip:1002@pbx.test>;tag=2\r\n"
        "Call-ID: nobody-asked@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()

    link.send(response)

    await link.silence(0.5)


@pytest_twisted.ensureDeferred
async def test_malformed_request_is_400_naming_the_problem(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    branch = new_branch()

    reply = await phone.request("OPTIONS", cseq_method="INVITE", branch=branch)

    assert reply.status == 400
    assert "CSeq" in reply.reason
    assert header_params(reply.get("via") or "")["branch"] == branch
    assert reply.get("call-id") == phone.call_id


@pytest_twisted.ensureDeferred
async def test_bad_max_forwards_is_400_naming_it(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    request = phone.build("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: many")

    phone.link.send(request)
    reply = await phone.link.response()

    assert reply.status == 400
    assert "Max-Forwards" in reply.reason


@pytest_twisted.ensureDeferred
async def test_garbage_without_via_is_dropped(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    link = await pbx.link("udp")

    link.send(b"OPTIONS sip:pbx.test SIP/2.0\r\nFrom: nobody\r\nContent-Length: 0\r\n\r\n")
    link.send(b"\x16\x03\x01 not SIP at all, some TLS hello or a scanner\r\n\r\n")

    await link.silence(0.5)


@pytest_twisted.ensureDeferred
async def test_udp_retransmission_gets_the_same_response(pbx_factory: Any) -> None:
    # (Over TCP a phone never retransmits, and the transaction ends with its
    # response: the same branch again is a new request, RFC 3261 §17.2.2.)
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", "udp")
    contacts = [f"<{phone.contact_uri}>"]
    challenge = await phone.request("REGISTER", contacts=contacts)
    request = phone.build("REGISTER", contacts=contacts, authorization=phone.answer(challenge))

    phone.link.send(request)
    first = await phone.link.response()
    phone.link.send(request)  # answered from the echo of the stateless 200: its very bytes
    again = await phone.link.response()

    assert first.status == 200
    assert again.raw == first.raw
    await phone.link.silence(0.1)


@pytest_twisted.ensureDeferred
async def test_udp_retransmitted_challenge_gets_the_same_401(pbx_factory: Any) -> None:
    """A 401 keeps no transaction (§8.2.7), but a retransmission within 8*T1 gets its
    very bytes again: the same nonce, not a new challenge the phone did not ask for."""
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", "udp")
    request = phone.build("REGISTER", contacts=[f"<{phone.contact_uri}>"])

    phone.link.send(request)
    first = await phone.link.response()
    phone.link.send(request)
    again = await phone.link.response()

    assert (first.status, again.status) == (401, 401)
    assert again.to_tag == first.to_tag
    assert again.challenges and again.challenges == first.challenges
    assert len(pbx.service.layer) == 0  # no transaction: only the echo of its bytes
    await phone.link.silence(0.1)


@pytest_twisted.ensureDeferred
async def test_merged_request_on_another_branch_is_482(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    request = phone.build("OPTIONS")
    forked = request.replace(b";branch=z9hG4bK", b";branch=z9hG4bKfork")

    phone.link.send(request)
    first = await phone.link.response()
    phone.link.send(forked)
    second = await phone.link.response()

    assert first.status == 200
    assert second.status == 482


def test_reply_parser_reads_folded_lines() -> None:
    reply = parse_reply(b"SIP/2.0 200 OK\r\nAllow: A,\r\n B\r\nl: 0\r\n\r\n")
    assert tokens(reply.get("allow")) == {"A", "B"}
    assert reply.get("content-length") == "0"
