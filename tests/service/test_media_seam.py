"""The media seam over real sockets: what a media session does to the bodies reaches the phones.

The example session of docs/media-seam.md, which rewrites every body the
way a relay does (the PBX's address as that phone reaches it, and a port
of the session's own for each leg), is set as the PBX's media factory;
the phones at both ends see the rewritten bodies in the INVITE, the 200,
a re-INVITE and its 200. A pass-through session changes no byte, and a
refusing factory is a 503 on the wire.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from pbx.media.seam import (
    MediaCall,
    MediaFactory,
    MediaRefused,
    MediaSession,
    PassThroughMedia,
    SessionDescription,
)
from tests.service.sipclient import direction_of, ring_then_answer
from tests.service.test_calls import connected

CALLER_SIDE_PORT = 30000
"""What the example session offers the caller; branch N's phone gets 30002 + 2N."""
DOC = Path(__file__).parents[2] / "docs" / "media-seam.md"


def example_factory() -> MediaFactory:
    """The `factory` of the example in docs/media-seam.md, run as the page shows it."""
    code = DOC.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # our own documentation's example
    factory: MediaFactory = namespace["factory"]
    return factory


def media_of(body: bytes) -> tuple[str | None, int]:
    """Where a body says to send the audio: (address, port)."""
    description = SessionDescription.parse(body)
    (audio,) = description.media
    connection = description.connection_of(audio)
    return (connection.address if connection else None), audio.port


@pytest_twisted.ensureDeferred
async def test_a_rewriting_session_changes_what_each_phone_is_sent(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    made: list[MediaCall] = []
    example = example_factory()

    def factory(call: MediaCall) -> MediaSession:
        made.append(call)
        return example(call)

    pbx.service.calls.media_factory = factory
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_then_answer(0))
    assert media_of(caller.sdp()) == ("127.0.0.1", caller.media_port)

    outgoing = await caller.call("1002")
    incoming = await callee.next_call()
    assert incoming.invite is not None
    assert media_of(incoming.invite.body) == ("127.0.0.1", CALLER_SIDE_PORT + 2)
    answer = await outgoing.final_response()
    assert media_of(answer.body) == ("127.0.0.1", CALLER_SIDE_PORT)
    await incoming.next_request("ACK")

    # Hold from the callee: the re-INVITE and its answer are rewritten too,
    # and what is not the address (the direction, the codecs) is kept.
    incoming.request("INVITE", body=callee.sdp("sendonly", version=2))
    reinvite = await outgoing.next_request("INVITE")
    assert media_of(reinvite.body) == ("127.0.0.1", CALLER_SIDE_PORT)
    assert direction_of(reinvite.body) == "sendonly"
    assert SessionDescription.parse(reinvite.body).origin.sess_version == 3
    reply = await incoming.final_response()
    assert reply.status == 200
    assert media_of(reply.body) == ("127.0.0.1", CALLER_SIDE_PORT + 2)
    assert direction_of(reply.body) == "recvonly"

    assert (await outgoing.bye()).status == 200
    await incoming.next_request("BYE")
    assert [call.caller for call in made] == ["1001"]


@pytest_twisted.ensureDeferred
async def test_a_pass_through_session_changes_no_byte(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    pbx.service.calls.media_factory = lambda call: PassThroughMedia()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing, incoming = await connected(caller, callee)
    assert incoming.invite is not None and incoming.invite.body == caller.sdp()

    incoming.request("INVITE", body=callee.sdp("sendonly", version=2))
    reinvite = await outgoing.next_request("INVITE")
    assert reinvite.body == callee.sdp("sendonly", version=2)
    reply = await incoming.final_response()
    assert reply.body == caller.sdp("recvonly", 2)
    assert (await outgoing.bye()).status == 200


@pytest_twisted.ensureDeferred
async def test_no_media_ports_left_is_a_clean_503(pbx_factory: Any) -> None:
    pbx = await pbx_factory()

    def exhausted(call: MediaCall) -> MediaSession:
        raise MediaRefused("No media ports left")

    pbx.service.calls.media_factory = exhausted
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")

    outgoing = await caller.call("1002")
    refused = await outgoing.final_response()
    assert (refused.status, refused.reason) == (503, "No media ports left")
    await callee.link.silence(0.2)  # nothing rang
    assert callee.calls == {}
    assert len(pbx.service.calls) == 0


@pytest_twisted.ensureDeferred
async def test_a_reinvite_without_sdp_gets_the_answer_from_the_other_phones_ack(
        pbx_factory: Any) -> None:
    """RFC 3261 §13.2.1: an offer in the 2xx is answered in the ACK, end to end."""
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing, incoming = await connected(caller, callee)
    outgoing.answers["INVITE"] = None  # the caller's phone answers by hand: with an offer

    incoming.request("INVITE")  # no SDP: "make me an offer"
    reinvite = await outgoing.next_request("INVITE")
    assert reinvite.body == b""
    outgoing.respond(reinvite, 200, body=caller.sdp("sendrecv", 2))
    incoming.ack_body = callee.sdp("sendrecv", 2)
    offer = await incoming.final_response()  # the callee's phone ACKs it with its answer
    assert offer.status == 200 and offer.body == caller.sdp("sendrecv", 2)

    ack = await outgoing.next_request("ACK")
    assert ack.body == callee.sdp("sendrecv", 2)
    assert ack.get("content-type") == "application/sdp"
    assert (await outgoing.bye()).status == 200
    await incoming.next_request("BYE")


PLUGIN = '''
from pathlib import Path
from typing import Any

DOC = Path({doc!r})


class Relay:
    name = "relay"

    async def start(self, api: Any) -> None:
        code = DOC.read_text().split("```python\\n", 1)[1].split("```", 1)[0]
        namespace: dict[str, Any] = {{}}
        exec(compile(code, str(DOC), "exec"), namespace)
        api.use_media(namespace["factory"])

    async def stop(self) -> None:
        pass


def create_plugin(settings: dict[str, object]) -> Relay:
    return Relay()
'''


@pytest_twisted.ensureDeferred
async def test_a_plugin_gives_every_call_its_media_session(
        pbx_factory: Any, tmp_path: Path) -> None:
    """The relay of issue 22 is a plugin: `api.use_media` is all it needs of the call."""
    plugin_file = tmp_path / "relay.py"
    plugin_file.write_text(PLUGIN.format(doc=str(DOC)))
    pbx = await pbx_factory({"plugins": {"relay": {"module": str(plugin_file)}}})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_then_answer(0))

    outgoing = await caller.call("1002")
    incoming = await callee.next_call()
    assert incoming.invite is not None
    assert media_of(incoming.invite.body) == ("127.0.0.1", CALLER_SIDE_PORT + 2)
    answer = await outgoing.final_response()
    assert media_of(answer.body) == ("127.0.0.1", CALLER_SIDE_PORT)
    with pytest.raises(ValueError, match="already provided by another plugin"):
        pbx.service.plugins.use_media(lambda call: PassThroughMedia())
