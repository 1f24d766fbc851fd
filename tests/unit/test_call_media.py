"""The media seam of a call (`pbx.media.seam`): every body that crosses goes through it.

The real `B2buaCall` runs against the recording `CallServices` of the session
timer tests, on a test clock. A `Recorder` session notes every crossing
with the legs it joins, and every branch, connection and release; a
`Rewriter` changes the bodies, and the tests check that what the other
phone is sent is the changed body.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pbx.core.call import B2buaCall, CallState, DialOutcome, Target
from pbx.core.media import CallMedia, media_leg
from pbx.core.owners import ResponseOwner
from pbx.media.seam import (
    Crossing,
    MediaLeg,
    MediaRefused,
    MediaSession,
    PassThroughMedia,
    SdpBody,
    SessionDescription,
    Side,
    with_connection,
)
from pbx.sip.message import Request, Response, make_response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.session_timer import negotiate_uas
from tests.unit.test_call_session_timer import CALLEE, CALLER, SDP_A, SDP_B, Services

CALLEE_2 = Peer("udp", "192.0.2.3", 5060)
SDP_B2 = SDP_B.replace(b"192.0.2.2", b"192.0.2.3")
PBX_ADDRESS = "192.0.2.10"


def name(leg: MediaLeg) -> str:
    return "caller" if leg.branch is None else f"callee{leg.branch}"


class Recorder(PassThroughMedia):
    """Notes what the call tells it, in order; changes nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
        self.seen.append(("offer", *self._where(crossing), body.data))
        return body.data

    def answer(self, body: SdpBody, crossing: Crossing) -> bytes:
        self.seen.append(("answer", *self._where(crossing), body.data))
        return body.data

    def offer_rejected(self, crossing: Crossing, status: int) -> None:
        self.seen.append(("offer rejected", *self._where(crossing), status))

    def connected(self, branch: MediaLeg) -> None:
        self.seen.append(("connected", name(branch)))

    def branch_ended(self, branch: MediaLeg) -> None:
        self.seen.append(("branch ended", name(branch)))

    def release(self) -> None:
        self.seen.append(("release",))

    @staticmethod
    def _where(crossing: Crossing) -> tuple[Any, ...]:
        message = crossing.method if crossing.status is None else f"{crossing.status}"
        if not crossing.initial:
            message = f"{message} ({crossing.method}, in dialog)"
        return (message, name(crossing.source), name(crossing.destination))

    @property
    def releases(self) -> int:
        return self.seen.count(("release",))


class Rewriter(Recorder):
    """Points every body at the PBX, as a relay does (the port: 7000 + the destination's number)."""

    def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
        super().offer(body, crossing)
        return self._rewrite(body, crossing)

    def answer(self, body: SdpBody, crossing: Crossing) -> bytes:
        super().answer(body, crossing)
        return self._rewrite(body, crossing)

    @staticmethod
    def _rewrite(body: SdpBody, crossing: Crossing) -> bytes:
        destination = crossing.destination
        port = 7000 + (0 if destination.branch is None else 10 + destination.branch)
        return with_connection(body.description(), destination.local_host,
                               [port] * len(body.description().media)).to_bytes()


def relayed(data: bytes, port: int) -> bytes:
    """`data` as the Rewriter sends it on to the leg whose port is `port`."""
    description = SessionDescription.parse(data)
    return with_connection(description, PBX_ADDRESS, [port] * len(description.media)).to_bytes()


# --------------------------------------------------------------------- the scene


def caller_invite(body: bytes = SDP_A) -> Request:
    lines = [
        "INVITE sip:1002@pbx.test SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcaller1;rport",
        "Max-Forwards: 70",
        "From: <sip:1001@pbx.test>;tag=caller",
        "To: <sip:1002@pbx.test>",
        "Call-ID: caller-call",
        "CSeq: 1 INVITE",
        "Contact: <sip:1001@192.0.2.1:5060>",
        *(["Content-Type: application/sdp"] if body else []),
        f"Content-Length: {len(body)}",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(message, Request)
    return message


class Scene:
    """One call, its phones played by the test, the media session given."""

    def __init__(self, session: MediaSession | None, invite: Request | None = None) -> None:
        self.services = Services()
        self.invite = invite or caller_invite()
        self.outcomes: list[DialOutcome] = []
        self._cseq = {"caller": 1, "callee": 0}
        media = None
        if session is not None:
            def local_address(peer: Peer) -> tuple[str, int]:
                return PBX_ADDRESS, 5060

            media = CallMedia(session, call_id=self.invite.call_id,
                              caller=media_leg(Side.CALLER, None, "1001", CALLER, local_address),
                              local_address=local_address)
        self.call = B2buaCall(self.services, transaction=object(),  # type: ignore[arg-type]
                         invite=self.invite, peer=CALLER, caller="1001", caller_name=None,
                         dialed="1002", session_timer=negotiate_uas(self.invite),  # type: ignore[arg-type]
                         media=media)

    # -- dialing and answering

    def dial(self, *peers: Peer, timeout_s: float = 30) -> None:
        self.call.dial([Target(request_uri=f"sip:1002@{peer.host}", peer=peer,
                               label=f"1002@{peer.host}") for peer in peers],
                       timeout_s, self.outcomes.append)

    def invite_to(self, peer: Peer) -> tuple[Request, ResponseOwner]:
        (sent,) = [(r, o) for r, p, o in self.services.requests
                   if r.method == "INVITE" and p == peer and r.to_addr.tag is None]
        return sent

    def callee_responds(self, peer: Peer, status: int, body: bytes = b"",
                        tag: str = "callee", headers: tuple[tuple[str, str], ...] = ()) -> None:
        request, owner = self.invite_to(peer)
        response = make_response(request, status, to_tag=tag, headers=[
            ("Contact", f"<sip:1002@{peer.host}:5060>"), *headers,
            *([("Content-Type", "application/sdp")] if body else [])], body=body)
        owner.on_response(parse_message(response.to_bytes()))  # type: ignore[arg-type]

    def caller_acks(self, body: bytes = b"") -> None:
        self.call.a_ack(self._caller_request("ACK", 1, body))

    def answered(self, *peers: Peer, body: bytes = SDP_B) -> None:
        self.dial(*(peers or (CALLEE,)))
        self.callee_responds((peers or (CALLEE,))[0], 200, body)
        self.caller_acks()
        assert self.call.state is CallState.ANSWERED

    # -- in the call

    def caller_sends(self, method: str, body: bytes = b"") -> None:
        self._cseq["caller"] += 1
        self.call.in_dialog_request(self.call.a, object(),  # type: ignore[arg-type]
                                    self._caller_request(method, self._cseq["caller"], body))

    def callee_sends(self, method: str, body: bytes = b"") -> None:
        leg = self.call.connected
        assert leg is not None
        self._cseq["callee"] += 1
        request = self._callee_request(method, self._cseq["callee"], body)
        self.call.in_dialog_request(leg, object(), request)  # type: ignore[arg-type]

    def callee_acks(self, body: bytes = b"") -> None:
        """The callee's ACK for the 2xx to its last re-INVITE."""
        leg = self.call.connected
        assert leg is not None
        self.call.ack_received(leg, self._callee_request("ACK", self._cseq["callee"], body))

    def _callee_request(self, method: str, cseq: int, body: bytes) -> Request:
        leg = self.call.connected
        assert leg is not None and leg.dialog is not None
        self._cseq["callee"] = cseq
        dialog = leg.dialog
        text = (f"{method} {dialog.local_contact.strip('<>')} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {leg.peer.host}:5060;branch=z9hG4bKb{method}{cseq}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:1002@pbx.test>;tag={dialog.id.remote_tag}\r\n"
                f"To: <sip:1001@pbx.test>;tag={dialog.id.local_tag}\r\n"
                f"Call-ID: {dialog.id.call_id}\r\nCSeq: {self._cseq['callee']} {method}\r\n"
                f"Contact: <sip:1002@{leg.peer.host}:5060>\r\n"
                + ("Content-Type: application/sdp\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n")
        request = parse_message(text.encode() + body)
        assert isinstance(request, Request)
        return request

    def last_request(self, method: str) -> tuple[Request, Peer, ResponseOwner]:
        return [entry for entry in self.services.requests if entry[0].method == method][-1]

    def relayed_request_answered(self, method: str, body: bytes = b"", status: int = 200) -> None:
        request, peer, owner = self.last_request(method)
        response = make_response(request, status, headers=[
            ("Contact", f"<sip:x@{peer.host}:5060>"),
            *([("Content-Type", "application/sdp")] if body else [])], body=body)
        owner.on_response(parse_message(response.to_bytes()))  # type: ignore[arg-type]

    def _caller_request(self, method: str, cseq: int, body: bytes) -> Request:
        text = ("{method} sip:pbx@192.0.2.10:5060 SIP/2.0\r\n"
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa{method}{cseq}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:1001@pbx.test>;tag=caller\r\n"
                "To: <sip:1002@pbx.test>;tag={tag}\r\nCall-ID: caller-call\r\n"
                "CSeq: {cseq} {method}\r\nContact: <sip:1001@192.0.2.1:5060>\r\n"
                "{content_type}Content-Length: {length}\r\n\r\n").format(
            method=method, cseq=cseq, tag=self.call.a.local_tag,
            content_type="Content-Type: application/sdp\r\n" if body else "",
            length=len(body))
        request = parse_message(text.encode() + body)
        assert isinstance(request, Request)
        return request

    def to_caller(self, status: int) -> Response:
        return [r for r in self.services.responses if r.status == status][-1]


# ------------------------------------------------------------ every crossing seen


def test_forking_each_branch_is_offered_early_media_and_the_answer_cross_and_the_loser_ends(
) -> None:
    recorder = Recorder()
    scene = Scene(recorder)
    scene.dial(CALLEE, CALLEE_2)
    scene.callee_responds(CALLEE_2, 183, SDP_B2, tag="second")
    scene.callee_responds(CALLEE, 200, SDP_B)
    scene.caller_acks()

    assert recorder.seen == [
        ("offer", "INVITE", "caller", "callee0", SDP_A),
        ("offer", "INVITE", "caller", "callee1", SDP_A),
        ("answer", "183", "callee1", "caller", SDP_B2),
        ("connected", "callee0"),
        ("answer", "200", "callee0", "caller", SDP_B),
        ("branch ended", "callee1"),
    ]


def test_a_late_offer_crosses_in_the_2xx_and_its_answer_in_the_ack() -> None:
    recorder = Recorder()
    scene = Scene(recorder, caller_invite(b""))
    scene.dial(CALLEE)
    scene.callee_responds(CALLEE, 200, SDP_B)
    scene.caller_acks(SDP_A)

    assert recorder.seen == [
        ("connected", "callee0"),
        ("offer", "200", "callee0", "caller", SDP_B),
        ("answer", "ACK", "caller", "callee0", SDP_A),
    ]


def test_reinvites_and_updates_cross_in_both_directions() -> None:
    recorder = Recorder()
    scene = Scene(recorder)
    scene.answered()
    del recorder.seen[:]
    held_a = SDP_A.replace(b"RTP/AVP 0\r\n", b"RTP/AVP 0\r\na=sendonly\r\n")
    held_b = SDP_B.replace(b"RTP/AVP 0\r\n", b"RTP/AVP 0\r\na=recvonly\r\n")

    scene.caller_sends("INVITE", held_a)
    scene.relayed_request_answered("INVITE", held_b)
    scene.callee_sends("UPDATE", SDP_B)
    scene.relayed_request_answered("UPDATE", SDP_A)
    scene.callee_sends("INVITE")  # no SDP: the offer comes in the 2xx (RFC 3261 §14.1)
    scene.relayed_request_answered("INVITE", SDP_A)

    assert recorder.seen == [
        ("offer", "INVITE (INVITE, in dialog)", "caller", "callee0", held_a),
        ("answer", "200 (INVITE, in dialog)", "callee0", "caller", held_b),
        ("offer", "UPDATE (UPDATE, in dialog)", "callee0", "caller", SDP_B),
        ("answer", "200 (UPDATE, in dialog)", "caller", "callee0", SDP_A),
        ("offer", "200 (INVITE, in dialog)", "caller", "callee0", SDP_A),
    ]


def test_a_reinvite_without_sdp_the_answer_in_the_ack_reaches_the_other_phone() -> None:
    """RFC 3261 §13.2.1, §14.1: the offer comes in the 2xx, the answer in the ACK.

    The PBX's ACK for the caller's 2xx carries that offer's answer, so it
    waits for the callee's ACK; a retransmitted 2xx gets the same ACK again.
    """
    recorder = Recorder()
    scene = Scene(recorder)
    scene.answered()
    del recorder.seen[:]
    acks = len(scene.services.acks)
    scene.callee_sends("INVITE")
    reinvite, peer, _ = scene.last_request("INVITE")
    assert peer == CALLER and reinvite.body == b""
    scene.relayed_request_answered("INVITE", SDP_A)  # the caller's offer
    assert len(scene.services.acks) == acks  # not yet: the answer is the callee's
    assert scene.services.responses[-1].body == SDP_A

    scene.callee_acks(SDP_B)
    (ack,) = scene.services.acks[acks:]
    assert (ack.method, ack.cseq.number, ack.body) == ("ACK", reinvite.cseq.number, SDP_B)
    assert ack.headers.get("content-type") == "application/sdp"
    scene.relayed_request_answered("INVITE", SDP_A)  # the caller did not get our ACK
    assert [a.body for a in scene.services.acks[acks:]] == [SDP_B, SDP_B]
    assert recorder.seen[:2] == [
        ("offer", "200 (INVITE, in dialog)", "caller", "callee0", SDP_A),
        ("answer", "ACK (ACK, in dialog)", "callee0", "caller", SDP_B),
    ]


def test_an_offer_the_other_phone_refuses_is_reported_with_its_status() -> None:
    recorder = Recorder()
    scene = Scene(recorder)
    scene.answered()
    del recorder.seen[:]
    scene.callee_sends("INVITE", SDP_B)
    scene.relayed_request_answered("INVITE", status=488)

    assert scene.services.responses[-1].status == 488  # relayed back to the callee
    assert recorder.seen == [
        ("offer", "INVITE (INVITE, in dialog)", "callee0", "caller", SDP_B),
        ("offer rejected", "INVITE (INVITE, in dialog)", "callee0", "caller", 488),
    ]
    assert scene.call.state is CallState.ANSWERED


def test_info_and_bodiless_requests_do_not_cross_the_media_session() -> None:
    recorder = Recorder()
    scene = Scene(recorder)
    scene.answered()
    del recorder.seen[:]
    scene.caller_sends("INFO", b"Signal=5\r\nDuration=160\r\n")
    scene.relayed_request_answered("INFO")
    scene.callee_sends("UPDATE")  # a session refresh without an offer
    scene.relayed_request_answered("UPDATE")
    assert recorder.seen == []


def test_the_legs_name_the_phones_and_the_pbx_address_each_reaches() -> None:
    crossings: list[Crossing] = []

    class Watcher(PassThroughMedia):
        def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
            crossings.append(crossing)
            return body.data

    scene = Scene(Watcher())
    scene.dial(CALLEE, CALLEE_2)
    first, second = crossings
    assert first.source == second.source
    assert (first.source.side, first.source.party, first.source.peer_host,
            first.source.peer_port) == (Side.CALLER, "1001", "192.0.2.1", 5060)
    assert [(c.destination.side, c.destination.branch, c.destination.party,
             c.destination.peer_host, c.destination.transport, c.destination.local_host)
            for c in crossings] == [
        (Side.CALLEE, 0, "1002@192.0.2.2", "192.0.2.2", "udp", PBX_ADDRESS),
        (Side.CALLEE, 1, "1002@192.0.2.3", "192.0.2.3", "udp", PBX_ADDRESS)]
    assert first.initial and first.status is None and not first.early


# ------------------------------------------------------------- what a session changes


def test_a_rewritten_body_is_what_the_other_leg_gets_in_every_message() -> None:
    scene = Scene(Rewriter())
    scene.dial(CALLEE)
    b_invite, _ = scene.invite_to(CALLEE)
    assert b_invite.body == relayed(SDP_A, 7010)
    scene.callee_responds(CALLEE, 183, SDP_B)
    assert scene.to_caller(183).body == relayed(SDP_B, 7000)
    scene.callee_responds(CALLEE, 200, SDP_B)
    ok = scene.to_caller(200)
    assert ok.body == relayed(SDP_B, 7000)
    assert ok.headers.get("content-type") == "application/sdp"
    scene.caller_acks()

    scene.caller_sends("INVITE", SDP_A)
    reinvite, _, _ = scene.last_request("INVITE")
    assert reinvite.body == relayed(SDP_A, 7010)
    scene.relayed_request_answered("INVITE", SDP_B)
    assert scene.to_caller(200).body == relayed(SDP_B, 7000)


def test_the_late_offers_answer_in_the_ack_is_rewritten_in_the_callees_ack() -> None:
    scene = Scene(Rewriter(), caller_invite(b""))
    scene.dial(CALLEE)
    scene.callee_responds(CALLEE, 200, SDP_B)
    assert scene.to_caller(200).body == relayed(SDP_B, 7000)
    scene.caller_acks(SDP_A)
    (ack,) = scene.services.acks
    assert ack.body == relayed(SDP_A, 7010)


def test_a_session_refresh_repeats_the_rewritten_body() -> None:
    """The PBX refreshes the caller's leg (RFC 4028) with what it last sent there."""
    scene = Scene(Rewriter(), _invite_with("Supported: timer", "Session-Expires: 90;refresher=uas"))
    scene.answered()
    scene.services.clock.advance(46)
    refresh, peer, _ = scene.last_request("INVITE")
    assert peer == CALLER and refresh.body == relayed(SDP_B, 7000)


def test_a_session_refresh_after_a_late_offer_repeats_the_answer_the_ack_carried() -> None:
    """The PBX refreshes the callee's leg (RFC 4028) with the SDP it sent there: the ACK's."""
    scene = Scene(None, caller_invite(b""))
    scene.dial(CALLEE)
    scene.callee_responds(CALLEE, 200, SDP_B, headers=(
        ("Session-Expires", "90;refresher=uac"), ("Require", "timer")))
    scene.caller_acks(SDP_A)
    scene.services.clock.advance(46)
    refresh, peer, _ = scene.last_request("INVITE")
    assert peer == CALLEE and refresh.to_addr.tag == "callee"
    assert refresh.body == SDP_A


def _invite_with(*headers: str) -> Request:
    invite = caller_invite()
    text = invite.to_bytes().replace(b"Contact:", "\r\n".join([*headers, "Contact:"]).encode(), 1)
    message = parse_message(text)
    assert isinstance(message, Request)
    return message


def test_pass_through_sends_the_very_same_messages_as_no_session() -> None:
    def run(session: MediaSession | None) -> list[bytes]:
        scene = Scene(session)
        scene.dial(CALLEE, CALLEE_2)
        scene.callee_responds(CALLEE, 183, SDP_B)
        scene.callee_responds(CALLEE, 200, SDP_B)
        scene.caller_acks()
        scene.caller_sends("INVITE", SDP_A)
        scene.relayed_request_answered("INVITE", SDP_B)
        scene.callee_sends("BYE")
        services = scene.services
        return ([r.to_bytes() for r, _, _ in services.requests]
                + [r.to_bytes() for r in services.responses]
                + [r.to_bytes() for r in services.acks])

    assert run(PassThroughMedia()) == run(None)


# -------------------------------------------------------------------- refusals


def test_a_refused_offer_to_a_branch_gives_the_caller_503_and_rings_nobody() -> None:
    class NoPorts(Recorder):
        def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
            if crossing.destination.branch == 1:
                raise MediaRefused("no media ports left")
            return super().offer(body, crossing)

    session = NoPorts()
    scene = Scene(session)
    scene.dial(CALLEE, CALLEE_2)

    assert scene.services.requests == []
    final = scene.services.responses[-1]
    assert (final.status, final.reason) == (503, "no media ports left")
    assert scene.call.ended and scene.outcomes and not scene.outcomes[0].answered
    assert session.releases == 1


def test_a_refused_reinvite_is_488_to_its_sender_and_the_call_goes_on() -> None:
    class NoVideo(Recorder):
        def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
            if any(m.media == "video" for m in body.description().media):
                raise MediaRefused("no video here")
            return super().offer(body, crossing)

    session = NoVideo()
    scene = Scene(session)
    scene.answered()
    sent = len(scene.services.requests)
    scene.caller_sends("INVITE", SDP_A + b"m=video 4002 RTP/AVP 31\r\n")

    assert len(scene.services.requests) == sent  # nothing relayed to the callee
    assert (scene.services.responses[-1].status,
            scene.services.responses[-1].reason) == (488, "no video here")
    assert scene.call.state is CallState.ANSWERED and session.releases == 0
    scene.caller_sends("INVITE", SDP_A)  # and the next offer goes through
    assert len(scene.services.requests) == sent + 1


def test_an_unparsable_reinvite_offer_is_refused_by_a_session_that_reads_it() -> None:
    scene = Scene(Rewriter())
    scene.answered()
    scene.caller_sends("INVITE", b"v=0\r\nthis is not sdp\r\n")
    assert scene.services.responses[-1].status == 488


def test_a_failing_session_is_contained_answers_cross_unchanged_and_offers_get_500() -> None:
    class Broken(PassThroughMedia):
        def answer(self, body: SdpBody, crossing: Crossing) -> bytes:
            raise RuntimeError("a bug in the plugin")

        def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
            if not crossing.initial:
                raise RuntimeError("a bug in the plugin")
            return body.data

    scene = Scene(Broken())
    scene.answered()
    assert scene.to_caller(200).body == SDP_B
    scene.caller_sends("INVITE", SDP_A)
    assert scene.services.responses[-1].status == 500
    assert scene.call.state is CallState.ANSWERED


# --------------------------------------------------------- released exactly once


def _caller_hangs_up(scene: Scene) -> None:
    scene.answered()
    scene.caller_sends("BYE")


def _callee_hangs_up(scene: Scene) -> None:
    scene.answered()
    scene.callee_sends("BYE")


def _caller_cancels(scene: Scene) -> None:
    scene.dial(CALLEE)
    scene.callee_responds(CALLEE, 180)
    scene.call.caller_cancelled()
    scene.callee_responds(CALLEE, 487)


def _every_branch_fails(scene: Scene) -> None:
    scene.dial(CALLEE, CALLEE_2)
    scene.callee_responds(CALLEE, 486)
    scene.callee_responds(CALLEE_2, 480)
    scene.call.finish()  # the dialplan returns


def _dial_times_out(scene: Scene) -> None:
    scene.dial(CALLEE, timeout_s=5)
    scene.services.clock.advance(5)
    scene.callee_responds(CALLEE, 487)
    scene.call.finish()


def _no_ack(scene: Scene) -> None:
    scene.dial(CALLEE)
    scene.callee_responds(CALLEE, 200, SDP_B)
    scene.services.clock.advance(64 * 0.5 + 1)


def _shutdown_while_talking(scene: Scene) -> None:
    scene.answered()
    scene.call.hangup()  # what `CallManager.hangup_all` does when the PBX stops


def _shutdown_while_ringing(scene: Scene) -> None:
    scene.dial(CALLEE)
    scene.call.hangup()


def _relayed_request_lost(scene: Scene) -> None:
    scene.answered()
    scene.caller_sends("INVITE", SDP_A)
    scene.relayed_request_answered("INVITE", status=481)


@pytest.mark.parametrize("ending", [
    _caller_hangs_up, _callee_hangs_up, _caller_cancels, _every_branch_fails, _dial_times_out,
    _no_ack, _shutdown_while_talking, _shutdown_while_ringing, _relayed_request_lost,
], ids=lambda f: f.__name__.strip("_"))
def test_the_session_is_released_exactly_once_however_the_call_ends(
        ending: Callable[[Scene], None]) -> None:
    recorder = Recorder()
    scene = Scene(recorder)
    ending(scene)
    assert scene.call.ended
    scene.call.hangup()  # anything more, once ended, releases nothing again
    scene.services.clock.advance(100)

    assert recorder.releases == 1
    assert recorder.seen[-1] == ("release",)
    branches = {event[1] for event in recorder.seen if event[0] == "branch ended"}
    connected = {event[1] for event in recorder.seen if event[0] == "connected"}
    offered = {event[3] for event in recorder.seen
               if event[0] == "offer" and event[1] == "INVITE"}
    # Every branch offered the call either won or was ended, once each.
    assert branches | connected == offered and not branches & connected
    assert len(branches) == sum(event[0] == "branch ended" for event in recorder.seen)


# --------------------------------------------------------------------- layering


def test_the_seam_a_plugin_imports_brings_neither_the_core_nor_the_reactor() -> None:
    """Plugins import `pbx.media` (DESIGN.md); the seam is plain data and a Protocol."""
    code = ("import sys, pbx.media.seam; "
            "core = sorted(m for m in sys.modules if m.startswith(('pbx.core', 'twisted'))); "
            "assert not core, core")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
