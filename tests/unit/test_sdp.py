"""SDP parse/serialize (RFC 4566) and the RFC 3264 offer/answer helpers."""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx.sip.errors import SipParseError
from pbx.sip.sdp import (
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Attribute,
    Bandwidth,
    Codec,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    Timing,
    answer,
    is_hold,
    with_connection,
)


def crlf(text: str) -> bytes:
    """Test bodies are written one line per source line and sent with CRLF, as on the wire."""
    return "".join(line + "\r\n" for line in text.strip().splitlines()).encode()


# RFC 4566 §5, the example session description.
RFC4566 = crlf("""
v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
c=IN IP4 224.2.17.12/127
t=2873397496 2873404696
a=recvonly
m=audio 49170 RTP/AVP 0
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
""")

# RFC 3264 §10.1, Alice's offer: audio and video, an empty s= line.
RFC3264_OFFER = crlf("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 8 97
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:97 iLBC/8000
m=video 51372 RTP/AVP 31 32
a=rtpmap:31 H261/90000
a=rtpmap:32 MPV/90000
""")

BARESIP = crlf("""
v=0
o=- 1718093418 3053571830 IN IP4 192.168.1.10
s=-
c=IN IP4 192.168.1.10
t=0 0
a=tool:baresip 3.10.1
m=audio 10000 RTP/AVP 0 8 101
b=AS:80
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=rtcp:10001
a=sendrecv
a=label:1
a=ssrc:2771409364 cname:sip:1001@pbx.example.org
a=ptime:20
""")

IPV6 = crlf("""
v=0
o=bob 2808844564 2808844564 IN IP6 2001:db8::2
s=Talk
c=IN IP6 2001:db8::2
t=0 0
m=audio 49172 RTP/AVP 8 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendonly
""")

WEBRTC = crlf("""
v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS stream1
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0
a=ice-ufrag:Oyef
a=ice-pwd:3Cz8fUF6vsjEbOVR8eGp6QbL
a=ice-options:trickle
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=sendrecv
a=msid:stream1 track1
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:126 telephone-event/8000
a=ssrc:3570614608 cname:4TOk42mSjXCkVIa6
a=ssrc:3570614608 msid:stream1 track1
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
b=AS:2000
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Oyef
a=ice-pwd:3Cz8fUF6vsjEbOVR8eGp6QbL
a=mid:1
a=recvonly
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
""")

# A GB28181 camera: multicast-free but with the y= and f= lines of that standard.
GB28181 = crlf("""
v=0
o=34020000001320000001 0 0 IN IP4 192.168.1.64
s=Play
c=IN IP4 192.168.1.64
t=0 0
m=video 15060/2 RTP/AVP 96
a=recvonly
a=rtpmap:96 PS/90000
y=0100000001
f=v/2/4///a///
""")

ORIGIN = Origin(username="pbx", sess_id="42", sess_version=1, address="203.0.113.5")
VOICE = (PCMU, PCMA, TELEPHONE_EVENT)


def offer_audio(media_lines: str, *, session: str = "") -> SessionDescription:
    """An offer from 192.0.2.1 with the given session attributes and media section(s)."""
    head = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"
    return SessionDescription.parse(head + session + media_lines)


def answer_to(offer: SessionDescription, supported: tuple[Codec, ...] = VOICE,
              **kwargs: Direction) -> SessionDescription:
    return answer(offer, supported, origin=ORIGIN, address="203.0.113.5", port=30000, **kwargs)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [RFC4566, RFC3264_OFFER, BARESIP, IPV6, WEBRTC, GB28181],
    ids=["rfc4566", "rfc3264", "baresip", "ipv6", "webrtc", "gb28181"],
)
def test_round_trip_is_byte_exact(body: bytes) -> None:
    assert SessionDescription.parse(body).to_bytes() == body


REAL_PHONES = sorted((Path(__file__).parents[1] / "data" / "sdp").glob("*.sdp"))
"""Bodies captured on loopback from Debian's baresip 1.0.0, linphonec 5.1 and SIPp 3.6.1:
each phone's offer when it calls, and its answer to an offer of PCMU, PCMA and
telephone-event when it is called (SIPp's built-in uac scenario: its offer)."""


@pytest.mark.parametrize("path", REAL_PHONES, ids=[path.stem for path in REAL_PHONES])
def test_real_phones_bodies_round_trip_and_a_relay_rewrite_changes_only_addresses(
        path: Path) -> None:
    body = path.read_bytes()
    sdp = SessionDescription.parse(body)
    assert sdp.to_bytes() == body
    relayed = with_connection(sdp, "203.0.113.9", [40000] * len(sdp.media)).to_bytes()
    changed = [(before, after) for before, after
               in zip(body.split(b"\r\n"), relayed.split(b"\r\n"), strict=True)
               if before != after]
    assert changed and all(after == b"c=IN IP4 203.0.113.9" or (
        after.startswith(b"m=audio 40000 ") and before.split(b" ")[2:] == after.split(b" ")[2:])
        for before, after in changed), changed


def test_real_phones_bodies_are_all_there() -> None:
    assert {path.name.split("-")[0] for path in REAL_PHONES} == {"baresip", "linphonec", "sipp"}


def test_lf_only_input_is_written_with_crlf() -> None:
    sdp = SessionDescription.parse(BARESIP.replace(b"\r\n", b"\n"))
    assert sdp.to_bytes() == BARESIP


def test_trailing_empty_lines_are_tolerated() -> None:
    assert SessionDescription.parse(IPV6 + b"\r\n\r\n").to_bytes() == IPV6


def test_str_input_parses_like_bytes() -> None:
    assert SessionDescription.parse(RFC4566.decode()) == SessionDescription.parse(RFC4566)


# --- typed values -----------------------------------------------------------------------------


def test_session_fields_of_the_rfc4566_example() -> None:
    sdp = SessionDescription.parse(RFC4566)
    assert sdp.origin == Origin(username="jdoe", sess_id="2890844526", sess_version=2890842807,
                                address="10.47.16.5")
    assert sdp.session_name == "SDP Seminar"
    assert sdp.uri == "http://www.example.com/seminars/sdp.pdf"
    assert sdp.emails == ("j.doe@example.com (Jane Doe)",)
    assert sdp.connection == Connection(address="224.2.17.12", ttl=127)
    assert sdp.timings == (Timing(start=2873397496, stop=2873404696),)
    assert [m.media for m in sdp.media] == ["audio", "video"]
    assert sdp.media[1].rtpmaps == {
        "99": RtpMap(payload_type=99, encoding_name="h263-1998", clock_rate=90000)
    }


def test_baresip_offer_typed_views() -> None:
    sdp = SessionDescription.parse(BARESIP)
    audio = sdp.media[0]
    assert (audio.port, audio.proto, audio.formats) == (10000, "RTP/AVP", ("0", "8", "101"))
    assert audio.rtpmaps["101"] == RtpMap(payload_type=101, encoding_name="telephone-event",
                                          clock_rate=8000)
    assert audio.fmtps == {"101": "0-15"}
    assert audio.ptime_ms == 20
    assert audio.maxptime_ms is None
    assert audio.bandwidths == (Bandwidth(bwtype="AS", bandwidth=80),)
    assert audio.get("rtcp") == "10001"
    assert sdp.get("tool") == "baresip 3.10.1"
    assert sdp.connection_of(audio) == Connection(address="192.168.1.10")


def test_ipv6_connection_and_media_level_direction() -> None:
    sdp = SessionDescription.parse(IPV6)
    assert sdp.connection == Connection(addrtype="IP6", address="2001:db8::2")
    assert sdp.origin.addrtype == "IP6"
    assert sdp.media[0].maxptime_ms == 150
    assert sdp.direction_of(sdp.media[0]) is Direction.SENDONLY


def test_webrtc_unknown_attributes_keep_their_order() -> None:
    audio = SessionDescription.parse(WEBRTC).media[0]
    names = [a.name for a in audio.attributes]
    assert names[:5] == ["rtcp", "candidate", "ice-ufrag", "ice-pwd", "ice-options"]
    assert audio.get_all("ssrc") == ["3570614608 cname:4TOk42mSjXCkVIa6",
                                     "3570614608 msid:stream1 track1"]
    assert audio.rtpmaps["111"].channels == 2
    assert audio.fmtps["111"] == "minptime=10;useinbandfec=1"
    assert audio.get("rtcp-mux") == ""


def test_direction_defaults_to_sendrecv_and_media_overrides_session() -> None:
    sdp = SessionDescription.parse(WEBRTC.replace(b"a=group:BUNDLE 0 1", b"a=inactive"))
    audio, video = sdp.media
    assert sdp.direction is Direction.INACTIVE
    assert sdp.direction_of(audio) is Direction.SENDRECV
    assert sdp.direction_of(video) is Direction.RECVONLY
    plain = SessionDescription.parse(RFC3264_OFFER)
    assert plain.direction_of(plain.media[0]) is Direction.SENDRECV


def test_static_payload_types_are_known_without_rtpmap() -> None:
    audio = SessionDescription.parse(RFC4566).media[0]
    assert audio.rtpmaps == {}
    assert audio.rtpmap_for("0") == RtpMap(payload_type=0, encoding_name="PCMU", clock_rate=8000)


def test_port_count_multicast_count_and_unknown_lines() -> None:
    sdp = SessionDescription.parse(GB28181)
    assert (sdp.media[0].port, sdp.media[0].port_count) == (15060, 2)
    assert sdp.media[0].extra == ("y=0100000001", "f=v/2/4///a///")
    multicast = SessionDescription.parse(RFC4566.replace(b"/127", b"/127/3"))
    assert multicast.connection == Connection(address="224.2.17.12", ttl=127, count=3)
    v6 = SessionDescription.parse(IPV6.replace(b"c=IN IP6 2001:db8::2", b"c=IN IP6 ff15::101/3"))
    assert v6.connection == Connection(addrtype="IP6", address="ff15::101", count=3)


def test_repeat_and_zone_lines_are_kept_verbatim() -> None:
    body = RFC4566.replace(b"t=2873397496 2873404696\r\n",
                           b"t=3034423619 3042462419\r\nr=7d 1h 0 25h\r\nz=2882844526 -1h\r\n")
    sdp = SessionDescription.parse(body)
    assert sdp.timings[0].repeats == ("7d 1h 0 25h",)
    assert sdp.zone == "2882844526 -1h"
    assert sdp.to_bytes() == body


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("o=- 1 1 IN IP4 h\ns=-\nt=0 0\n", "must start with a v= line"),
        ("v=0\no=- 1 IN IP4 h\ns=-\n", "line 2 'o=- 1 IN IP4 h': o= needs 6 fields"),
        ("v=0\no=- 1 x IN IP4 h\ns=-\n", "sess-version is not a number"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio abc RTP/AVP 0\n",
         "line 5 'm=audio abc RTP/AVP 0': port is not a number"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 70000 RTP/AVP 0\n", "port is not a number"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 4000/x RTP/AVP 0\n", "port count"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP5 192.0.2.1\n",
         "line 4 'c=IN IP5 192.0.2.1': address type must be IP4 or IP6"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 239.1.1.1/abc\n", "bad multicast TTL"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nhello world\n",
         "line 4 'hello world': not of the form x=value"),
        ("v=0\no=- 1 1 IN IP4 h\n\ns=-\nt=0 0\n", "line 3 '': not of the form x=value"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 96\na=rtpmap:96 opus\n",
         "line 6 'a=rtpmap:96 opus': rtpmap must be"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0\na=ptime:twenty\n",
         "ptime must be a number"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nb=AS\n", "b= must be <bwtype>:<number>"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=now later\n", "t= must be <start> <stop>"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nr=7d 1h 0 25h\n", "r= before any t= line"),
        ("v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 4000 RTP/AVP 0\nt=0 0\n",
         "t= is not allowed after the first m= line"),
        ("v=0\no=- 1 1 IN IP4 h\nt=0 0\n", "SDP has no s= line"),
        ("v=0\ns=-\nt=0 0\n", "SDP has no o= line"),
        ("v=0\no=- 1 1 IN IP4 h\no=- 2 2 IN IP4 h\ns=-\n", "second o= line"),
        ("", "must start with a v= line"),
    ],
)
def test_malformed_sdp_is_a_400_naming_the_line(body: str, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        SessionDescription.parse(body.encode())
    assert info.value.status == 400
    assert reason in info.value.reason


def test_non_utf8_body_is_a_400() -> None:
    with pytest.raises(SipParseError) as info:
        SessionDescription.parse(BARESIP.replace(b"s=-", b"s=\xff"))
    assert info.value.status == 400
    assert "UTF-8" in info.value.reason


def test_a_fractional_packet_time_is_a_number_of_milliseconds() -> None:
    """RFC 8866 §6.4/§6.5: ptime and maxptime are ``non-zero-int-or-real``."""
    body = BARESIP.replace(b"a=ptime:20", b"a=ptime:22.5\r\na=maxptime:0.125")
    sdp = SessionDescription.parse(body)
    assert (sdp.media[0].ptime_ms, sdp.media[0].maxptime_ms) == (22.5, 0.125)
    assert sdp.to_bytes() == body
    for bad in (b"a=ptime:.5", b"a=ptime:5.", b"a=ptime:1.2.3"):
        with pytest.raises(SipParseError):
            SessionDescription.parse(BARESIP.replace(b"a=ptime:20", bad))


def test_huge_bad_line_is_shortened_in_the_reason() -> None:
    with pytest.raises(SipParseError) as info:
        SessionDescription.parse(b"v=0\r\n" + b"x" * 10_000 + b"\r\n")
    assert len(info.value.reason) < 200


# --- answer (RFC 3264 §6) ---------------------------------------------------------------------


def test_answer_to_baresip_offer_is_exactly_what_goes_on_the_wire() -> None:
    got = answer_to(SessionDescription.parse(BARESIP))
    assert got.to_bytes() == crlf("""
v=0
o=pbx 42 1 IN IP4 203.0.113.5
s=-
c=IN IP4 203.0.113.5
t=0 0
m=audio 30000 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
""")


def test_answer_keeps_the_offerers_order_not_ours() -> None:
    got = answer_to(offer_audio("m=audio 4000 RTP/AVP 8 0 18\n"), (PCMU, PCMA))
    assert got.media[0].formats == ("8", "0")


def test_answer_recognises_static_types_and_matches_names_case_insensitively() -> None:
    got = answer_to(offer_audio("m=audio 4000 RTP/AVP 0 96\na=rtpmap:96 pcma/8000\n"))
    assert got.media[0].formats == ("0", "96")
    assert got.media[0].rtpmaps["0"].encoding_name == "PCMU"
    assert got.media[0].rtpmaps["96"].encoding_name == "pcma"


def test_answer_needs_matching_clock_rate() -> None:
    offer = offer_audio("m=audio 4000 RTP/AVP 0 110 101\n"
                        "a=rtpmap:110 telephone-event/48000\na=rtpmap:101 telephone-event/8000\n")
    assert answer_to(offer).media[0].formats == ("0", "101")


def test_answer_rejects_video_when_only_audio_is_supported() -> None:
    got = answer_to(SessionDescription.parse(RFC3264_OFFER))
    audio, video = got.media
    assert (audio.port, audio.formats) == (30000, ("0", "8"))
    assert (video.media, video.port, video.proto, video.formats) == (
        "video", 0, "RTP/AVP", ("31",))
    assert b"m=video 0 RTP/AVP 31\r\n" in got.to_bytes()


def test_answer_rejects_audio_without_a_common_voice_codec() -> None:
    offer = offer_audio("m=audio 4000 RTP/AVP 18 101\n"
                        "a=rtpmap:18 G729/8000\na=rtpmap:101 telephone-event/8000\n")
    got = answer_to(offer)
    assert (got.media[0].port, got.media[0].formats) == (0, ("18",))


def test_answer_rejects_srtp_and_second_audio_stream() -> None:
    got = answer_to(SessionDescription.parse(WEBRTC))
    assert [m.port for m in got.media] == [0, 0]
    two = answer_to(offer_audio("m=audio 4000 RTP/AVP 0\nm=audio 4002 RTP/AVP 0\n"))
    assert [m.port for m in two.media] == [30000, 0]


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("sendonly", "recvonly"), ("recvonly", "sendonly"),
     ("inactive", "inactive"), ("sendrecv", "sendrecv")],
)
def test_answer_direction_mirrors_the_offer(offered: str, answered: str) -> None:
    got = answer_to(offer_audio(f"m=audio 4000 RTP/AVP 0\na={offered}\n"))
    assert got.media[0].direction is Direction(answered)
    assert f"a={answered}\r\n".encode() in got.to_bytes()


def test_answer_honours_session_level_direction_and_our_own_hold() -> None:
    held = answer_to(offer_audio("m=audio 4000 RTP/AVP 0\n", session="a=sendonly\n"))
    assert held.media[0].direction is Direction.RECVONLY
    ours = answer_to(offer_audio("m=audio 4000 RTP/AVP 0\n"), direction=Direction.SENDONLY)
    assert ours.media[0].direction is Direction.SENDONLY


def test_answer_copies_ptime_only_when_offered_and_copies_timing() -> None:
    offer = offer_audio("m=audio 4000 RTP/AVP 0\n").media[0]
    sdp = dataclasses.replace(SessionDescription.parse(RFC4566), media=(offer,))
    got = answer_to(sdp)
    assert got.media[0].ptime_ms is None
    assert got.timings == (Timing(start=2873397496, stop=2873404696),)
    assert SessionDescription.parse(got.to_bytes()) == got


# --- with_connection (media relay) ------------------------------------------------------------


def test_with_connection_rewrites_ipv4_and_leaves_the_original_alone() -> None:
    original = SessionDescription.parse(BARESIP)
    relayed = with_connection(original, "198.51.100.7", [40000])
    assert relayed.connection == Connection(address="198.51.100.7")
    assert relayed.media[0].port == 40000
    assert relayed.origin == original.origin
    assert original.to_bytes() == BARESIP
    text = relayed.to_bytes().decode()
    assert "192.168.1.10" not in text.split("o=", 1)[1].split("\r\n", 1)[1]
    assert "a=rtcp:" not in text  # would point RTCP past the relay
    assert "a=ssrc:2771409364" in text


def test_with_connection_switches_to_ipv6_everywhere() -> None:
    relayed = with_connection(SessionDescription.parse(RFC3264_OFFER), "2001:db8::7",
                              [40000, 40002])
    assert relayed.connection == Connection(addrtype="IP6", address="2001:db8::7")
    assert b"c=IN IP6 2001:db8::7\r\n" in relayed.to_bytes()
    assert [m.port for m in relayed.media] == [40000, 40002]


def test_with_connection_media_level_c_lines_and_ice_are_rewritten() -> None:
    relayed = with_connection(SessionDescription.parse(WEBRTC), "203.0.113.9",
                              lambda i, m: 50000 + 2 * i)
    assert [m.port for m in relayed.media] == [50000, 50002]
    assert all(m.connections == (Connection(address="203.0.113.9"),) for m in relayed.media)
    assert relayed.connection is None
    assert not any(m.get("candidate") or m.get("ice-ufrag") for m in relayed.media)
    assert relayed.media[0].get("fingerprint") is not None


def test_with_connection_keeps_rejected_streams_rejected() -> None:
    rejected = answer_to(SessionDescription.parse(RFC3264_OFFER))
    relayed = with_connection(rejected, "198.51.100.7", [40000, 40002])
    assert [m.port for m in relayed.media] == [40000, 0]


def test_with_connection_bumps_version_only_when_asked() -> None:
    sdp = SessionDescription.parse(BARESIP)
    assert with_connection(sdp, "198.51.100.7", [1]).origin.sess_version == 3053571830
    bumped = with_connection(sdp, "198.51.100.7", [1], bump_version=True)
    assert b"o=- 1718093418 3053571831 IN IP4" in bumped.to_bytes()


def test_with_connection_refuses_wrong_number_of_ports() -> None:
    with pytest.raises(ValueError, match="1 ports for 2 media"):
        with_connection(SessionDescription.parse(RFC3264_OFFER), "198.51.100.7", [40000])


# --- hold ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "media", "held"),
    [
        ("", "a=sendonly\n", True),
        ("", "a=inactive\n", True),
        ("a=sendonly\n", "", True),
        ("", "c=IN IP4 0.0.0.0\n", True),
        ("", "a=sendrecv\n", False),
        ("", "a=recvonly\n", False),
        ("a=sendonly\n", "a=sendrecv\n", False),
    ],
)
def test_is_hold(session: str, media: str, held: bool) -> None:
    assert is_hold(offer_audio("m=audio 4000 RTP/AVP 0\n" + media, session=session)) is held


def test_hold_and_resume_via_with_direction() -> None:
    sdp = SessionDescription.parse(BARESIP)
    on_hold = sdp.with_direction(Direction.SENDONLY)
    assert is_hold(on_hold)
    assert b"a=sendonly\r\na=label:1" in on_hold.to_bytes()  # in place, order kept
    assert not is_hold(on_hold.with_direction(Direction.SENDRECV))
    assert not is_hold(answer_to(offer_audio("m=audio 0 RTP/AVP 0\na=sendonly\n")))


# --- property: generated descriptions round-trip ----------------------------------------------

TOKEN = st.text(string.ascii_letters + string.digits + ".-_", min_size=1, max_size=10)
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=16)
NUMBER = st.integers(min_value=0, max_value=2**40)


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    address = draw(TOKEN)
    if draw(st.booleans()):
        return Connection(addrtype="IP6", address=address,
                          count=draw(st.none() | st.integers(1, 9)))
    ttl = draw(st.none() | st.integers(0, 255))
    count = None if ttl is None else draw(st.none() | st.integers(1, 9))
    return Connection(address=address, ttl=ttl, count=count)


BANDWIDTHS = st.builds(Bandwidth, bwtype=st.sampled_from(["AS", "CT", "TIAS"]), bandwidth=NUMBER)
ATTRIBUTES = st.lists(
    st.builds(Attribute, name=TOKEN.map("x-".__add__), value=st.none() | TEXT)
    | st.sampled_from([Direction.SENDONLY, Direction.INACTIVE]).map(lambda d: Attribute(name=d))
    | st.builds(RtpMap, payload_type=st.integers(0, 127), encoding_name=TOKEN,
                clock_rate=st.integers(1, 96000), channels=st.none() | st.integers(1, 8))
      .map(lambda r: Attribute(name="rtpmap", value=str(r)))
    | st.integers(1, 200).map(lambda p: Attribute(name="ptime", value=str(p))),
    max_size=6,
).map(tuple)
EXTRA = st.lists(st.builds("{}={}".format, st.sampled_from("fgjlnqwxy"), TEXT), max_size=2)
OPTIONAL_TEXT = st.none() | TEXT

MEDIA = st.builds(
    MediaDescription, media=TOKEN, port=st.integers(0, 65535),
    port_count=st.none() | st.integers(1, 8), proto=st.sampled_from(
        ["RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udp"]),
    formats=st.lists(TOKEN, min_size=1, max_size=5).map(tuple), information=OPTIONAL_TEXT,
    connections=st.lists(connections(), max_size=2).map(tuple),
    bandwidths=st.lists(BANDWIDTHS, max_size=2).map(tuple), key=OPTIONAL_TEXT,
    attributes=ATTRIBUTES, extra=EXTRA.map(tuple),
)
SESSIONS = st.builds(
    SessionDescription, version=st.integers(0, 9),
    origin=st.builds(Origin, username=TOKEN, sess_id=NUMBER.map(str), sess_version=NUMBER,
                     addrtype=st.sampled_from(["IP4", "IP6"]), address=TOKEN),
    session_name=TEXT, information=OPTIONAL_TEXT, uri=OPTIONAL_TEXT,
    emails=st.lists(TEXT, max_size=2).map(tuple), phones=st.lists(TEXT, max_size=2).map(tuple),
    connection=st.none() | connections(), bandwidths=st.lists(BANDWIDTHS, max_size=2).map(tuple),
    timings=st.lists(st.builds(Timing, start=NUMBER, stop=NUMBER,
                               repeats=st.lists(TEXT, max_size=2).map(tuple)),
                     max_size=2).map(tuple),
    zone=OPTIONAL_TEXT, key=OPTIONAL_TEXT, attributes=ATTRIBUTES, extra=EXTRA.map(tuple),
    media=st.lists(MEDIA, max_size=3).map(tuple),
)


@given(SESSIONS)
def test_generated_descriptions_round_trip(sdp: SessionDescription) -> None:
    wire = sdp.to_bytes()
    parsed = SessionDescription.parse(wire)
    assert parsed == sdp
    assert parsed.to_bytes() == wire


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_sip_parse_error(data: bytes) -> None:
    try:
        SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n" + data)
    except SipParseError as exc:
        assert exc.status == 400
