"""Two baresip phones call each other through the real PBX; the media flows end to end.

Everything runs inside a network namespace the test makes (`netns`): the PBX
on 10.77.0.1:5060, phone 1001 on 10.77.0.2:5060 and 1002 on 10.77.0.3:5060,
so the addresses the phones write into their SDP are ones the other phone
can reach, and no packet leaves the namespace (notes/baresip.md).

The PBX is a B2BUA for signalling only: it passes each phone's SDP to the
other unchanged, and RTP goes straight from phone to phone. Each phone plays
a tone (1001: 440 Hz, 1002: 880 Hz, made with sox) and dumps what it hears
with the sndfile module; an FFT of the dump shows that each phone heard the
other's tone, not its own and not silence.

baresip 1.0 (libre 1.1) answers only MD5 digest challenges, for REGISTER
and for the PBX's 407 alike, so these PBXs offer MD5 alone. What baresip 1.0
does, seen here: `hangup` on a ringing incoming call answers ``486
Rejected``; `hangup` on an outgoing call still ringing sends CANCEL.

Each test ends by reading the PBX's call detail record from SQLite.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.conftest import (
    DOMAIN,
    USERS,
    Netns,
    Pbx,
    Phone,
    requires_baresip,
    wait_for,
)

np = pytest.importorskip("numpy")

pytestmark = [
    pytest.mark.interop,
    requires_baresip,
    pytest.mark.skipif(shutil.which("sox") is None,
                       reason="sox not installed (apt-get install sox)"),
]

PBX_HOST = "10.77.0.1"
PHONE_HOSTS = {"1001": "10.77.0.2", "1002": "10.77.0.3"}
RTP_PORTS = {"1001": "20000-20099", "1002": "20100-20199"}
TONES_HZ = {"1001": 440, "1002": 880}
TONE_LENGTH_S = 20  # longer than any call here: aufile does not loop
TALK_S = 3.0
SAMPLE_RATE = 8000  # PCMU, and the dumps sndfile writes
TOLERANCE_HZ = 20.0
EVENT_TIMEOUT_S = 5.0
RING_S = 2  # how long the dialplan rings a phone nobody picks up

# Extensions ring for RING_S seconds, then the caller hears what happened.
RING_BRIEFLY = f"""
from pbx.dialplan import Call, Dialplan

dialplan = Dialplan()


@dialplan.route(pattern=r"10\\d\\d")
async def extension(call: Call) -> None:
    await call.dial(call.dialed, timeout_s={RING_S})
"""


@dataclass
class Office:
    pbx: Pbx
    caller: Phone  # 1001
    callee: Phone  # 1002


@pytest.fixture
def office(netns: Netns, make_pbx: Callable[..., Pbx], make_phone: Callable[..., Phone],
           tmp_path: Path) -> Office:
    """The PBX and two registered phones in `netns` (made first, so deleted last)."""
    pbx = make_pbx(host=PBX_HOST, netns=netns.name, sip_port=5060, tls_port=5061,
                   digest_algorithms=("MD5",), debug=True, dialplan=RING_BRIEFLY)
    phones = {}
    for extension, host in PHONE_HOSTS.items():
        tone = tmp_path / f"tone-{TONES_HZ[extension]}.wav"
        subprocess.run(
            ["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(tone),
             "synth", str(TONE_LENGTH_S), "sine", str(TONES_HZ[extension])],
            check=True, capture_output=True, timeout=30)
        phones[extension] = make_phone(
            extension=extension, password=USERS[extension], transport="udp",
            pbx_port=pbx.sip_port, pbx_host=PBX_HOST, host=host, netns=netns,
            audio_source=tone, record_dir=tmp_path / f"heard-{extension}",
            rtp_ports=RTP_PORTS[extension], sip_trace=True)
    for phone in phones.values():
        phone.wait_registered(timeout_s=10)
    return Office(pbx=pbx, caller=phones["1001"], callee=phones["1002"])


def ring(office: Office) -> None:
    """1001 dials 1002; 1002 rings, and 1001 hears that it does (180 through the PBX)."""
    office.caller.command("dial", f"sip:1002@{DOMAIN}")
    incoming = office.callee.wait_event("CALL_INCOMING", EVENT_TIMEOUT_S)
    assert incoming["peeruri"] == f"sip:1001@{DOMAIN}"  # the caller ID the PBX vouches for
    office.caller.wait_event("CALL_RINGING", EVENT_TIMEOUT_S)


def the_cdr(pbx: Pbx) -> dict[str, object]:
    rows = wait_for(pbx.cdrs, 5.0, "the call detail record")
    [row] = rows  # type: ignore[misc]
    assert (row["caller"], row["dialed"], row["targets"]) == ("1001", "1002", '["1002"]')
    return row  # type: ignore[no-any-return]


def heard(phone: Phone) -> Path:
    """The one dump of decoded (received) audio the phone's sndfile module wrote."""
    assert phone.record_dir is not None
    [path] = phone.record_dir.glob("*-dec.wav")
    return path


def spectrum_peak(path: Path) -> tuple[float, float]:
    """(dominant frequency in Hz, RMS amplitude in 0..1) of a 16-bit mono WAV."""
    with wave.open(str(path), "rb") as dump:
        assert (dump.getnchannels(), dump.getsampwidth()) == (1, 2)
        rate = dump.getframerate()
        frames = dump.readframes(dump.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0
    assert len(samples) >= rate, f"{path.name}: only {len(samples) / rate:.2f} s of audio"
    rms = float(np.sqrt(np.mean(samples**2)))
    magnitudes = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    magnitudes[0] = 0.0  # DC
    frequencies = np.fft.rfftfreq(len(samples), 1.0 / rate)
    return float(frequencies[int(np.argmax(magnitudes))]), rms


def bytes_heard(phone: Phone) -> int:
    assert phone.record_dir is not None
    return sum(p.stat().st_size for p in phone.record_dir.glob("*-dec.wav"))


@pytest.mark.parametrize("hangs_up", ["caller", "callee"])
def test_answered_call_carries_both_tones(office: Office, hangs_up: str) -> None:
    ring(office)
    office.callee.command("accept")
    office.caller.wait_event("CALL_ESTABLISHED", EVENT_TIMEOUT_S)
    office.callee.wait_event("CALL_ESTABLISHED", EVENT_TIMEOUT_S)
    # Talk until both dumps hold TALK_S of audio (16-bit samples), however long
    # RTP took to start.
    wanted = int(TALK_S * SAMPLE_RATE * 2)
    wait_for(lambda: min(bytes_heard(office.caller), bytes_heard(office.callee)) >= wanted,
             TALK_S + 5, f"{TALK_S} s of audio at both phones")

    ending, other = ((office.caller, office.callee) if hangs_up == "caller"
                     else (office.callee, office.caller))
    ending.command("hangup")
    closed = other.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert closed["param"] == "Connection reset by peer"  # a BYE, relayed by the PBX
    ending.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)

    row = the_cdr(office.pbx)
    assert (row["answered_by"], row["hangup_by"], row["status"]) == ("1002", hangs_up, 200)
    assert row["answered_at"] is not None
    assert float(row["duration_s"]) >= TALK_S  # type: ignore[arg-type]
    for phone, expected_hz in ((office.callee, TONES_HZ["1001"]),
                               (office.caller, TONES_HZ["1002"])):
        frequency, rms = spectrum_peak(heard(phone))
        assert abs(frequency - expected_hz) <= TOLERANCE_HZ, (
            f"{phone.extension} heard {frequency:.0f} Hz, expected {expected_hz} Hz")
        assert rms > 0.1, f"{phone.extension} heard near silence (RMS {rms:.3f})"


def test_busy_callee_rejects(office: Office) -> None:
    ring(office)

    office.callee.command("hangup")  # baresip 1.0 answers a ringing call 486 Rejected

    closed = office.caller.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert str(closed["param"]).startswith("486 "), closed  # relayed to the caller
    office.callee.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert "CALL_ESTABLISHED" not in office.caller.event_types()
    row = the_cdr(office.pbx)
    # Nobody answered: the PBX passed the branch's 486 on to the caller, and
    # the record says the busy callee ended the call.
    assert (row["answered_by"], row["status"], row["hangup_by"]) == (None, 486, "callee")
    assert row["answered_at"] is None
    assert row["duration_s"] == 0


def test_caller_cancels_while_ringing(office: Office) -> None:
    ring(office)

    office.caller.command("hangup")  # baresip sends CANCEL

    closed = office.callee.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert closed["param"] == "Connection reset by peer"  # the PBX CANCELed its INVITE
    office.caller.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert "CALL_ESTABLISHED" not in office.callee.event_types()
    row = the_cdr(office.pbx)
    assert (row["answered_by"], row["status"], row["hangup_by"]) == (None, 487, "caller")
    assert row["answered_at"] is None


def test_nobody_answers(office: Office) -> None:
    ring(office)

    # The dialplan's timeout: the PBX CANCELs the ringing phone and tells the caller.
    closed = office.callee.wait_event("CALL_CLOSED", RING_S + EVENT_TIMEOUT_S)
    assert closed["param"] == "Connection reset by peer"  # CANCELed, as a caller would
    closed = office.caller.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert str(closed["param"]).startswith("408 "), closed
    assert "CALL_ESTABLISHED" not in office.callee.event_types()
    row = the_cdr(office.pbx)
    assert (row["answered_by"], row["status"], row["hangup_by"]) == (None, 408, "pbx")
    assert row["answered_at"] is None
    assert row["duration_s"] == 0
