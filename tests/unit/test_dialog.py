"""Dialogs (RFC 3261 §12): creation on both sides, requests built from them, CSeq rules.

Messages are written as a peer would send them and parsed from bytes; the
requests a dialog builds are serialised and parsed again before the test
looks at them, so every assertion is about what goes on the wire.
"""

from __future__ import annotations

import pytest

from pbx.sip.dialog import (
    REJECTION_REASONS,
    Dialog,
    DialogId,
    DialogState,
    dialog_id_of_request,
    dialog_id_of_response,
)
from pbx.sip.errors import LocalProtocolError, SipParseError
from pbx.sip.message import Request, Response, parse_message

VIA = "SIP/2.0/UDP pbx.test:5060;branch=z9hG4bKpbx1"


def parse(text: str) -> Request | Response:
    return parse_message(text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n\r\n")


def request(text: str) -> Request:
    message = parse(text)
    assert isinstance(message, Request)
    return message


def response(text: str) -> Response:
    message = parse(text)
    assert isinstance(message, Response)
    return message


def wire(message: Request) -> Request:
    """What the peer receives."""
    return request(message.to_bytes().decode().rstrip("\r\n").replace("\r\n", "\n"))


# The call of RFC 3261 §24.2, as the PBX places it towards Bob through two
# record-routing proxies: ss1 near us, ss2 near Bob.
OUR_INVITE = """
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pbx.test:5060;branch=z9hG4bKnashds8
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: "Alice" <sip:1001@pbx.test>;tag=9fxced76sl
Call-ID: 3848276298220188511@pbx.test
CSeq: 314159 INVITE
Contact: <sip:1001@192.0.2.1:5060>
"""

BOB_200 = """
SIP/2.0 200 OK
Via: SIP/2.0/UDP pbx.test:5060;branch=z9hG4bKnashds8;received=192.0.2.1
Record-Route: <sip:ss2.biloxi.example.com;lr>, <sip:ss1.atlanta.example.com;lr>
To: Bob <sip:bob@biloxi.example.com>;tag=314159
From: "Alice" <sip:1001@pbx.test>;tag=9fxced76sl
Call-ID: 3848276298220188511@pbx.test
CSeq: 314159 INVITE
Contact: <sip:bob@192.0.2.4>
"""

# A call the PBX answers: Bob's phone calls 1001 through the same proxies.
THEIR_INVITE = """
INVITE sip:1001@pbx.test SIP/2.0
Via: SIP/2.0/UDP ss2.biloxi.example.com;branch=z9hG4bK721e418c4.1
Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776asdhds
Record-Route: <sip:ss2.biloxi.example.com;lr>
Record-Route: <sip:ss1.biloxi.example.com;lr;transport=tcp>
Max-Forwards: 69
To: "Alice" <sip:1001@pbx.test>
From: Bob <sip:bob@biloxi.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.biloxi.example.com
CSeq: 7 INVITE
Contact: <sip:bob@192.0.2.4:5060;transport=udp>
"""


def uac_dialog() -> Dialog:
    return Dialog.as_uac(request(OUR_INVITE), response(BOB_200))


def uas_dialog(*, early: bool = False) -> Dialog:
    return Dialog.as_uas(request(THEIR_INVITE), local_tag="pbx-tag-1",
                         local_contact="<sip:1001@192.0.2.1:5060>", early=early)


def from_bob(method: str, cseq: int, *, contact: str | None = None,
             to_tag: str = "9fxced76sl") -> Request:
    """A request Bob sends in the UAC dialog (he is the remote side)."""
    contact_line = f"\nContact: {contact}" if contact else ""
    return request(f"""
{method} sip:1001@192.0.2.1:5060 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK-{method}-{cseq}
Max-Forwards: 70
From: Bob <sip:bob@biloxi.example.com>;tag=314159
To: "Alice" <sip:1001@pbx.test>;tag={to_tag}
Call-ID: 3848276298220188511@pbx.test
CSeq: {cseq} {method}{contact_line}
""")


def answer(sent: Request, status: int, *, contact: str | None = None,
           to_tag: str = "314159", record_route: str | None = None) -> Response:
    """Bob's response to a request the dialog built."""
    lines = [f"SIP/2.0 {status} Whatever", f"Via: {sent.headers.get('via')}"]
    if record_route:
        lines.append(f"Record-Route: {record_route}")
    lines += [f"From: {sent.headers.get('from')}",
              f"To: <sip:bob@biloxi.example.com>;tag={to_tag}",
              f"Call-ID: {sent.call_id}", f"CSeq: {sent.cseq}"]
    if contact:
        lines.append(f"Contact: {contact}")
    return response("\n".join(lines))


# ------------------------------------------------------------ UAC creation


def test_uac_dialog_state_from_invite_and_200() -> None:
    dialog = uac_dialog()
    assert dialog.id == DialogId(call_id="3848276298220188511@pbx.test",
                                 local_tag="9fxced76sl", remote_tag="314159")
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.remote_target == "sip:bob@192.0.2.4"
    assert dialog.local_seq == 314159
    assert dialog.remote_seq is None
    # §12.1.2: the response's Record-Route in reverse order.
    assert dialog.route_set == ("<sip:ss1.atlanta.example.com;lr>",
                                "<sip:ss2.biloxi.example.com;lr>")
    assert dialog.local_uri == '"Alice" <sip:1001@pbx.test>'
    assert dialog.remote_uri == '"Bob" <sip:bob@biloxi.example.com>'  # the tag is kept apart


def test_bye_after_loose_routes_goes_to_the_contact_through_the_proxies_in_order() -> None:
    bye = wire(uac_dialog().new_request("BYE", via=VIA))
    assert bye.method == "BYE"
    assert str(bye.uri) == "sip:bob@192.0.2.4"
    assert [r.uri_text for r in bye.routes] == ["sip:ss1.atlanta.example.com;lr",
                                                "sip:ss2.biloxi.example.com;lr"]
    assert str(bye.cseq) == "314160 BYE"
    assert bye.from_addr.tag == "9fxced76sl"
    assert bye.to_addr.tag == "314159"
    assert bye.from_addr.display_name == "Alice"
    assert bye.call_id == "3848276298220188511@pbx.test"
    assert bye.headers.get("contact") is None  # BYE is no target refresh
    assert bye.max_forwards == 70
    assert bye.headers.get("via") == VIA


def test_strict_routing_example_of_section_12_2_1_1() -> None:
    # §12.2.1.1: remote target sip:user@remoteua, route set
    # <sip:proxy1>,<sip:proxy2>,<sip:proxy3;lr>,<sip:proxy4> gives
    # "METHOD sip:proxy1" and Route: <sip:proxy2>,<sip:proxy3;lr>,<sip:proxy4>,<sip:user@remoteua>
    dialog = Dialog(call_id="c1", local_tag="a", remote_tag="b", local_uri="<sip:a@x>",
                    remote_uri="<sip:b@y>", remote_target="sip:user@remoteua", local_seq=1,
                    route_set=("<sip:proxy1>", "<sip:proxy2>", "<sip:proxy3;lr>",
                               "<sip:proxy4>"))
    info = wire(dialog.new_request("INFO", via=VIA))
    assert str(info.uri) == "sip:proxy1"
    assert [r.uri_text for r in info.routes] == [
        "sip:proxy2", "sip:proxy3;lr", "sip:proxy4", "sip:user@remoteua"]


def test_strict_route_loses_parameters_a_request_uri_may_not_carry() -> None:
    dialog = Dialog(call_id="c1", local_tag="a", remote_tag="b", local_uri="<sip:a@x>",
                    remote_uri="<sip:b@y>", remote_target="sip:user@remoteua",
                    route_set=("<sip:proxy1;method=INVITE;transport=tcp?Subject=hi>",))
    bye = wire(dialog.new_request("BYE", via=VIA))
    assert str(bye.uri) == "sip:proxy1;transport=tcp"
    assert [r.uri_text for r in bye.routes] == ["sip:user@remoteua"]


def test_uac_early_dialog_is_confirmed_by_the_2xx_and_takes_its_route_set() -> None:
    invite = request(OUR_INVITE)
    ringing = response(BOB_200.replace("200 OK", "180 Ringing").replace(
        "Record-Route: <sip:ss2.biloxi.example.com;lr>, <sip:ss1.atlanta.example.com;lr>\n",
        "Record-Route: <sip:ss1.atlanta.example.com;lr>\n").replace(
        "<sip:bob@192.0.2.4>", "<sip:bob@192.0.2.4;early>"))
    dialog = Dialog.as_uac(invite, ringing)
    assert dialog.state is DialogState.EARLY
    assert dialog.remote_target == "sip:bob@192.0.2.4;early"
    ended = dialog.receive_response(invite, response(BOB_200))
    assert not ended
    assert dialog.state is DialogState.CONFIRMED
    assert dialog.remote_target == "sip:bob@192.0.2.4"
    assert dialog.route_set == ("<sip:ss1.atlanta.example.com;lr>",
                                "<sip:ss2.biloxi.example.com;lr>")


def test_a_2xx_from_another_fork_leaves_the_early_dialog_alone() -> None:
    invite = request(OUR_INVITE)
    dialog = Dialog.as_uac(invite, response(BOB_200.replace("200 OK", "183 Progress")))
    other_fork = response(BOB_200.replace("tag=314159", "tag=other-fork"))
    assert dialog.receive_response(invite, other_fork) is False
    assert dialog.state is DialogState.EARLY


def test_non_2xx_final_to_the_invite_ends_the_early_dialog() -> None:
    invite = request(OUR_INVITE)
    dialog = Dialog.as_uac(invite, response(BOB_200.replace("200 OK", "180 Ringing")))
    busy = response(BOB_200.replace("200 OK", "486 Busy Here").replace("tag=314159", "tag=x"))
    assert dialog.receive_response(invite, busy) is True
    assert dialog.state is DialogState.TERMINATED


def test_uac_rejects_responses_that_cannot_make_a_dialog() -> None:
    invite = request(OUR_INVITE)
    with pytest.raises(SipParseError):
        Dialog.as_uac(invite, response(BOB_200.replace(";tag=314159", "")))
    with pytest.raises(LocalProtocolError):
        Dialog.as_uac(invite, response(BOB_200.replace("200 OK", "100 Trying")))


def test_uac_2xx_without_contact_keeps_the_request_uri_as_target() -> None:
    dialog = Dialog.as_uac(request(OUR_INVITE),
                           response(BOB_200.replace("Contact: <sip:bob@192.0.2.4>\n", "")))
    assert dialog.remote_target == "sip:bob@biloxi.example.com"


def test_secure_only_over_tls_to_a_sips_uri() -> None:
    sips = OUR_INVITE.replace("INVITE sip:bob@", "INVITE sips:bob@")
    over_tls = sips.replace("SIP/2.0/UDP pbx.test", "SIP/2.0/TLS pbx.test")
    assert Dialog.as_uac(request(over_tls), response(BOB_200)).secure
    assert not Dialog.as_uac(request(sips), response(BOB_200)).secure
    assert not uac_dialog().secure
    their_sips = THEIR_INVITE.replace("INVITE sip:1001", "INVITE sips:1001")
    assert Dialog.as_uas(request(their_sips), local_tag="t", local_contact="<sip:p@x>",
                         early=False, secure=True).secure
    assert not Dialog.as_uas(request(THEIR_INVITE), local_tag="t",
                             local_contact="<sip:p@x>", early=False, secure=True).secure


# ------------------------------------------------------------ UAS creation


def test_uas_dialog_state_from_the_invite() -> None:
    dialog = uas_dialog()
    assert dialog.id == DialogId(call_id="a84b4c76e66710@pc33.biloxi.example.com",
                                 local_tag="pbx-tag-1", remote_tag="1928301774")
    assert dialog.remote_seq == 7
    assert dialog.local_seq == 0
    assert dialog.remote_target == "sip:bob@192.0.2.4:5060;transport=udp"
    # §12.1.1: the request's Record-Route in order, parameters kept.
    assert dialog.route_set == ("<sip:ss2.biloxi.example.com;lr>",
                                "<sip:ss1.biloxi.example.com;lr;transport=tcp>")
    assert dialog.state is DialogState.CONFIRMED


def test_uas_bye_swaps_from_and_to_and_starts_our_cseq() -> None:
    bye = wire(uas_dialog().new_request("BYE", via=VIA))
    assert str(bye.uri) == "sip:bob@192.0.2.4:5060;transport=udp"
    assert [r.uri_text for r in bye.routes] == ["sip:ss2.biloxi.example.com;lr",
                                                "sip:ss1.biloxi.example.com;lr;transport=tcp"]
    assert str(bye.from_addr) == '"Alice" <sip:1001@pbx.test>;tag=pbx-tag-1'
    assert str(bye.to_addr) == '"Bob" <sip:bob@biloxi.example.com>;tag=1928301774'
    assert bye.cseq.number == 1


def test_uas_early_dialog_is_confirmed_when_we_send_the_2xx() -> None:
    dialog = uas_dialog(early=True)
    assert dialog.state is DialogState.EARLY
    dialog.confirm()
    assert dialog.state is DialogState.CONFIRMED
    dialog.terminate()
    with pytest.raises(LocalProtocolError):
        dialog.confirm()


def test_uas_needs_a_contact_and_an_out_of_dialog_request() -> None:
    without = THEIR_INVITE.replace("Contact: <sip:bob@192.0.2.4:5060;transport=udp>\n", "")
    with pytest.raises(SipParseError):
        Dialog.as_uas(request(without), local_tag="t", local_contact="<sip:p@x>", early=False)
    with pytest.raises(LocalProtocolError):
        Dialog.as_uas(from_bob("INVITE", 2), local_tag="t", local_contact="<sip:p@x>",
                      early=False)


# ------------------------------------------------------------ sending


def test_each_new_request_takes_the_next_cseq_and_ack_reuses_the_invites() -> None:
    dialog = uac_dialog()
    reinvite = dialog.new_request("INVITE", via=VIA, body=b"v=0\r\n",
                                  content_type="application/sdp")
    assert reinvite.cseq.number == 314160
    ack = wire(dialog.ack(reinvite.cseq.number, via=VIA))
    assert str(ack.cseq) == "314160 ACK"
    assert dialog.local_seq == 314160  # the ACK did not move it
    assert str(ack.uri) == "sip:bob@192.0.2.4"
    assert [r.uri_text for r in ack.routes] == ["sip:ss1.atlanta.example.com;lr",
                                                "sip:ss2.biloxi.example.com;lr"]
    assert ack.headers.get("contact") is None
    assert dialog.new_request("BYE", via=VIA).cseq.number == 314161


def test_ack_for_the_initial_invite_carries_a_late_answer() -> None:
    ack = wire(uac_dialog().ack(314159, via=VIA, body=b"v=0\r\n",
                                content_type="application/sdp",
                                headers=[("Authorization", 'Digest username="1001"')]))
    assert str(ack.cseq) == "314159 ACK"
    assert ack.body == b"v=0\r\n"
    assert ack.content_type is not None and ack.content_type.value == "application/sdp"
    assert ack.headers.get("authorization") == 'Digest username="1001"'


def test_target_refresh_requests_carry_our_contact_and_others_do_not() -> None:
    dialog = uac_dialog()
    for method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
        built = wire(dialog.new_request(method, via=VIA))
        assert built.headers.get("contact") == "<sip:1001@192.0.2.1:5060>", method
    for method in ("BYE", "INFO", "OPTIONS", "PRACK", "MESSAGE"):
        assert wire(dialog.new_request(method, via=VIA)).headers.get("contact") is None


def test_ack_and_cancel_are_not_new_requests() -> None:
    dialog = uac_dialog()
    for method in ("ACK", "CANCEL"):
        with pytest.raises(LocalProtocolError):
            dialog.new_request(method, via=VIA)
    dialog.terminate()
    with pytest.raises(LocalProtocolError):
        dialog.new_request("BYE", via=VIA)


def test_local_cseq_stops_below_2_31() -> None:
    dialog = uac_dialog()
    dialog.local_seq = 2**31 - 2
    assert dialog.new_request("INFO", via=VIA).cseq.number == 2**31 - 1
    with pytest.raises(LocalProtocolError):
        dialog.new_request("INFO", via=VIA)


# ------------------------------------------------------------ receiving requests


def test_first_request_from_the_callee_sets_the_remote_cseq_then_it_must_grow() -> None:
    dialog = uac_dialog()
    assert dialog.receive_request(from_bob("INFO", 4711)) is None
    assert dialog.remote_seq == 4711
    # A gap is fine (§12.2.2: a challenged request leaves one).
    assert dialog.receive_request(from_bob("INFO", 4720)) is None
    assert dialog.remote_seq == 4720
    assert dialog.receive_request(from_bob("INFO", 4719)) == 500
    assert dialog.receive_request(from_bob("INFO", 4720)) == 500
    assert dialog.remote_seq == 4720
    assert REJECTION_REASONS[500] == "CSeq Out Of Order"


def test_ack_and_cancel_carry_the_invites_cseq_and_are_not_out_of_order() -> None:
    dialog = uas_dialog()  # remote CSeq 7 from the INVITE
    ack = request(THEIR_INVITE.replace("INVITE sip:1001", "ACK sip:1001").replace(
        "CSeq: 7 INVITE", "CSeq: 7 ACK").replace(
        'To: "Alice" <sip:1001@pbx.test>', 'To: "Alice" <sip:1001@pbx.test>;tag=pbx-tag-1'))
    assert dialog.receive_request(ack) is None
    assert dialog.remote_seq == 7
    bye = request(THEIR_INVITE.replace("INVITE sip:1001", "BYE sip:1001").replace(
        "CSeq: 7 INVITE", "CSeq: 8 BYE").replace(
        'To: "Alice" <sip:1001@pbx.test>', 'To: "Alice" <sip:1001@pbx.test>;tag=pbx-tag-1'))
    assert dialog.receive_request(bye) is None
    assert dialog.state is DialogState.TERMINATED


def test_reinvite_and_update_move_the_remote_target_info_does_not() -> None:
    dialog = uac_dialog()
    assert dialog.receive_request(from_bob("INVITE", 1, contact="<sip:bob@198.51.100.7>")) \
        is None
    assert dialog.remote_target == "sip:bob@198.51.100.7"
    assert dialog.receive_request(from_bob("UPDATE", 2, contact="<sip:bob@198.51.100.8>")) \
        is None
    assert dialog.remote_target == "sip:bob@198.51.100.8"
    assert dialog.receive_request(from_bob("INFO", 3, contact="<sip:bob@198.51.100.9>")) \
        is None
    assert dialog.remote_target == "sip:bob@198.51.100.8"
    assert dialog.receive_request(from_bob("UPDATE", 4)) is None  # no Contact: target stays
    assert dialog.remote_target == "sip:bob@198.51.100.8"
    assert wire(dialog.new_request("BYE", via=VIA)).uri.text == "sip:bob@198.51.100.8"


def test_target_refresh_to_a_non_sip_contact_is_refused_and_changes_nothing() -> None:
    dialog = uac_dialog()
    assert dialog.receive_request(from_bob("INVITE", 5, contact="<tel:+15551234>")) == 400
    assert dialog.remote_target == "sip:bob@192.0.2.4"
    assert dialog.remote_seq is None


def test_bye_ends_the_dialog_and_nothing_is_accepted_after_it() -> None:
    dialog = uac_dialog()
    assert dialog.receive_request(from_bob("BYE", 10)) is None
    assert dialog.state is DialogState.TERMINATED
    assert dialog.receive_request(from_bob("INFO", 11)) == 481


def test_a_request_of_another_dialog_is_481() -> None:
    dialog = uac_dialog()
    assert dialog.receive_request(from_bob("INFO", 1, to_tag="not-ours")) == 481
    assert dialog.remote_seq is None


# ------------------------------------------------------------ receiving responses


def test_481_or_408_to_an_in_dialog_request_ends_the_dialog() -> None:
    for status in (481, 408):
        dialog = uac_dialog()
        info = dialog.new_request("INFO", via=VIA)
        assert dialog.receive_response(info, answer(info, status)) is True
        assert dialog.state is DialogState.TERMINATED
        assert dialog.receive_response(info, answer(info, status)) is False  # already over


def test_no_answer_at_all_counts_as_408() -> None:
    dialog = uac_dialog()
    assert dialog.receive_timeout(dialog.new_request("OPTIONS", via=VIA)) is True
    assert dialog.state is DialogState.TERMINATED


def test_other_failures_leave_the_dialog_up() -> None:
    dialog = uac_dialog()
    reinvite = dialog.new_request("INVITE", via=VIA)
    assert dialog.receive_response(reinvite, answer(reinvite, 488)) is False
    assert dialog.state is DialogState.CONFIRMED


def test_2xx_to_a_target_refresh_moves_the_target_2xx_to_info_does_not() -> None:
    dialog = uac_dialog()
    info = dialog.new_request("INFO", via=VIA)
    dialog.receive_response(info, answer(info, 200, contact="<sip:bob@203.0.113.1>"))
    assert dialog.remote_target == "sip:bob@192.0.2.4"
    update = dialog.new_request("UPDATE", via=VIA)
    dialog.receive_response(update, answer(update, 200, contact="<sip:bob@203.0.113.2>"))
    assert dialog.remote_target == "sip:bob@203.0.113.2"
    # The route set of a confirmed dialog never changes (§12.2).
    reinvite = dialog.new_request("INVITE", via=VIA)
    dialog.receive_response(reinvite, answer(reinvite, 200, contact="<sip:bob@203.0.113.3>",
                                             record_route="<sip:evil.example;lr>"))
    assert dialog.remote_target == "sip:bob@203.0.113.3"
    assert "<sip:evil.example;lr>" not in dialog.route_set


# ------------------------------------------------------------ identities


def test_dialog_ids_of_messages_and_matching() -> None:
    dialog = uac_dialog()
    incoming = from_bob("INFO", 1)
    assert dialog_id_of_request(incoming) == dialog.id
    assert dialog.matches(incoming)
    sent = dialog.new_request("INFO", via=VIA)
    reply = answer(sent, 200)
    assert dialog_id_of_response(reply) == dialog.id
    assert dialog.matches(reply)
    assert not dialog.matches(request(OUR_INVITE))  # our own request, not addressed to us
    outside = request(THEIR_INVITE)
    assert dialog_id_of_request(outside).local_tag == ""


def test_dialogs_are_entities_hashed_by_identity() -> None:
    one, two = uac_dialog(), uac_dialog()
    assert one != two and one.id == two.id
    assert len({one, two}) == 2
