"""The media factory of the `CallManager`: a session per call, or a clean 503.

The whole service on a test clock, the phones played with the messages of
`tests.unit.test_call_memory` (SIPp's), so the INVITE goes through the
endpoint, authentication and the `CallManager` as on the wire.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from pbx.media.seam import (
    Crossing,
    MediaCall,
    MediaRefused,
    MediaSession,
    PassThroughMedia,
    SdpBody,
    Side,
)
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.message import Request
from tests.unit.test_call_memory import CALLEE, CALLER, LINGER_S, PASSWORDS, SDP, Office


class Counting(PassThroughMedia):
    def __init__(self) -> None:
        self.releases = 0
        self.offers: list[Crossing] = []

    def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
        self.offers.append(crossing)
        return body.data

    def release(self) -> None:
        self.releases += 1


@pytest.fixture
def office(tmp_path: Path) -> Office:
    office = Office(tmp_path)
    office.register_callee()
    return office


def invite_with_credentials(office: Office) -> None:
    """The caller's INVITE, challenged and sent again with credentials."""
    office.deliver(office.caller_request("INVITE", 1, "inv1", body=SDP), CALLER)
    (challenge,) = office.responses(CALLER, 407)
    office.deliver(office.caller_request("ACK", 1, "inv1", to_tag=challenge.to_addr.tag or ""),
                   CALLER)
    chosen = select_challenge(Challenge.parse(v)
                              for v in challenge.headers.values("proxy-authenticate"))
    assert chosen is not None
    credentials = authorization_for(chosen, username="1001", password=PASSWORDS["1001"],
                                    method="INVITE", uri="sip:1002@pbx.test", cnonce="c2")
    office.deliver(office.caller_request(
        "INVITE", 2, "inv2", body=SDP,
        extra=f"Proxy-Authorization: {credentials.to_header_value()}\r\n"), CALLER)


def test_the_factory_is_told_the_call_and_the_callers_leg(office: Office) -> None:
    made: list[MediaCall] = []
    sessions: list[Counting] = []

    def factory(call: MediaCall) -> MediaSession:
        made.append(call)
        sessions.append(Counting())
        return sessions[-1]

    office.calls.media_factory = factory
    office.dial()
    (call,) = made
    assert (call.call_id, call.caller, call.dialed) == ("call-1@127.0.0.1", "1001", "1002")
    leg = call.caller_leg
    assert (leg.side, leg.branch, leg.party) == (Side.CALLER, None, "1001")
    assert (leg.transport, leg.peer_host, leg.peer_port, leg.local_host) == (
        "udp", "127.0.0.1", 6001, "127.0.0.1")
    (offer,) = sessions[0].offers
    assert offer.source is leg
    assert (offer.destination.branch, offer.destination.peer_port) == (0, 6002)


def test_a_refusing_factory_is_503_to_the_caller_and_leaves_nothing_behind(
        office: Office) -> None:
    def no_ports(call: MediaCall) -> MediaSession:
        raise MediaRefused("No media ports left")

    office.calls.media_factory = no_ports
    invite_with_credentials(office)

    replies = office.take(CALLER)
    assert [(r.status, r.reason) for r in replies] == [  # type: ignore[union-attr]
        (503, "No media ports left")]
    assert office.take(CALLEE) == []  # nothing rang
    assert len(office.calls) == 0
    office.deliver(office.caller_request("ACK", 2, "inv2",
                                         to_tag=replies[0].to_addr.tag or ""), CALLER)
    office.wait(LINGER_S)
    assert len(office.service.layer) == 0
    assert office.service.cdr_queue.rows == []


def test_a_factory_that_fails_is_500_and_the_pbx_carries_on(office: Office) -> None:
    def broken(call: MediaCall) -> MediaSession:
        raise RuntimeError("a bug in the plugin")

    office.calls.media_factory = broken
    invite_with_credentials(office)
    assert [r.status for r in office.take(CALLER)] == [500]  # type: ignore[union-attr]
    assert len(office.calls) == 0


def test_stopping_the_pbx_releases_every_session_once(office: Office) -> None:
    session = Counting()
    office.calls.media_factory = lambda call: session
    office.dial()
    office.answer()
    office.calls.hangup_all()  # what the service does when it stops
    office.clock.advance(0)  # what is sent outside an event leaves on the next turn
    assert session.releases == 1
    assert [m.method for m in office.take(CALLER) if isinstance(m, Request)] == ["BYE"]
    assert [m.method for m in office.take(CALLEE) if isinstance(m, Request)] == ["BYE"]


def test_a_call_with_a_session_is_freed_without_the_cyclic_collector(office: Office) -> None:
    """The session and the legs' views hold nothing that points back at the call."""
    session = Counting()
    office.calls.media_factory = lambda call: session
    gc.collect()
    gc.disable()
    try:
        office.dial()
        (call,) = office.calls.calls
        ended = weakref.ref(call)
        del call
        to_tag = office.answer()
        office.deliver(office.caller_request("BYE", 3, "bye3", to_tag=to_tag), CALLER)
        (bye,) = [m for m in office.take(CALLEE) if isinstance(m, Request)]
        office.callee_answers(200, "OK", request=bye)
        office.wait(LINGER_S)
        assert session.releases == 1
        assert ended() is None, "the ended call waits for the cyclic garbage collector"
    finally:
        gc.enable()
