"""Phones set up as docs/phones.md says, calling through etc/pbx.toml exactly as shipped.

What a new office gets from `make run`: the shipped config file and
dialplan, unchanged (`ShippedPbx` copies etc/ and dialplans/ side by side,
so even the relative paths are the shipped ones), the ``0.0.0.0``
listeners with no public address, and MD5 and SHA-256 offered as the file
says. The PBX runs on a host of its own (`lan`: 10.77.0.1) and the phones
on the office LAN (10.77.0.2, .3), so the PBX has to find by itself the
address the phones can reach it at; if it wrote 127.0.0.1 into its Via,
Contact or Record-Route, their ACKs and BYEs would go nowhere.

The phones are configured with the files of docs/phones/, only the PBX's
address (and the transport, extension and password) put in: the set-up
the documentation shows is the one tested here.

Audio: each phone plays its own tone (1001: 440 Hz, 1002: 880 Hz); each
must hear the other's for most of the call, half-second by half-second.
Linphone has no sound card here: it plays and records files (`Linphone`).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.conftest import (
    DOMAIN,
    Linphone,
    Netns,
    Pbx,
    Phone,
    phone_example,
    requires_baresip,
    requires_linphone,
    shipped_config,
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
TONE_LENGTH_S = 30  # longer than any call here: neither phone loops its file
TALK_S = 4.0
SAMPLE_RATE = 8000  # PCMU
WINDOW_S = 0.5
TOLERANCE_HZ = 20.0
MOST_OF_THE_CALL = 0.8  # share of the half-seconds heard that must carry the tone
EVENT_TIMEOUT_S = 10.0

EXAMPLE_PBX_ADDRESS = "192.0.2.10"  # the address docs/phones/ show for the PBX
EXAMPLE_EXTENSION = "1001"
EXAMPLE_PASSWORD = "alice-change-me"


def shipped_password(extension: str) -> str:
    return str(shipped_config()["users"][extension]["password"])


def make_tone(folder: Path, hertz: int) -> Path:
    tone = folder / f"tone-{hertz}.wav"
    if not tone.exists():
        subprocess.run(
            ["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(tone),
             "synth", str(TONE_LENGTH_S), "sine", str(hertz)],
            check=True, capture_output=True, timeout=30)
    return tone


def baresip_accounts(extension: str, transport: str) -> str:
    """docs/phones/baresip-accounts for `extension` over `transport`, PBX at PBX_HOST."""
    return phone_example("baresip-accounts", {
        f"sip:{EXAMPLE_EXTENSION}@": f"sip:{extension}@",
        EXAMPLE_PASSWORD: shipped_password(extension),
        EXAMPLE_PBX_ADDRESS: PBX_HOST,
        "transport=udp": f"transport={transport}",
    })


def tone_share(path: Path, expected_hz: int) -> tuple[float, float]:
    """(share of half-second windows whose loudest frequency is `expected_hz`, seconds heard).

    A window counts only if it is not silence: a call that carried the tone
    for a moment and then went quiet or heard itself fails.
    """
    with wave.open(str(path), "rb") as dump:
        assert (dump.getnchannels(), dump.getsampwidth()) == (1, 2)
        rate = dump.getframerate()
        frames = dump.readframes(dump.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0
    size = int(WINDOW_S * rate)
    windows = [samples[i:i + size] for i in range(0, len(samples) - size + 1, size)]
    assert windows, f"{path.name}: less than {WINDOW_S} s of audio"
    frequencies = np.fft.rfftfreq(size, 1.0 / rate)
    good = 0
    for window in windows:
        if float(np.sqrt(np.mean(window**2))) < 0.05:
            continue
        magnitudes = np.abs(np.fft.rfft(window * np.hanning(size)))
        magnitudes[0] = 0.0
        if abs(float(frequencies[int(np.argmax(magnitudes))]) - expected_hz) <= TOLERANCE_HZ:
            good += 1
    return good / len(windows), len(samples) / rate


def heard(phone: Phone) -> Path:
    assert phone.record_dir is not None
    [path] = phone.record_dir.glob("*-dec.wav")
    return path


def bytes_heard(phone: Phone) -> int:
    assert phone.record_dir is not None
    return sum(p.stat().st_size for p in phone.record_dir.glob("*-dec.wav"))


def assert_heard_tone(path: Path, who: str, expected_hz: int) -> None:
    share, seconds = tone_share(path, expected_hz)
    assert share >= MOST_OF_THE_CALL, (
        f"{who} heard {expected_hz} Hz in only {share:.0%} of {seconds:.1f} s")


def the_cdr(pbx: Pbx) -> dict[str, object]:
    rows = wait_for(pbx.cdrs, 5.0, "the call detail record")
    [row] = rows  # type: ignore[misc]
    assert (row["caller"], row["dialed"]) == ("1001", "1002")
    return row  # type: ignore[no-any-return]


def baresip_phone(make_phone: Callable[..., Phone], lan: Netns, tmp_path: Path,
                  extension: str, transport: str) -> Phone:
    return make_phone(
        extension=extension, password=shipped_password(extension), transport=transport,
        pbx_port=5060, pbx_host=PBX_HOST, host=PHONE_HOSTS[extension], netns=lan,
        accounts=baresip_accounts(extension, transport),
        audio_source=make_tone(tmp_path, TONES_HZ[extension]),
        record_dir=tmp_path / f"heard-{extension}", rtp_ports=RTP_PORTS[extension],
        sip_trace=True)


def assert_no_loopback_sent(phone: Phone) -> None:
    """The PBX never told a phone on the LAN to reach it at 127.0.0.1."""
    trace = phone.output()
    assert "127.0.0.1" not in trace, f"{phone.extension} was given a loopback address"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_call_with_audio_both_ways(
    lan: Netns, make_pbx: Callable[..., Pbx], make_phone: Callable[..., Phone],
    tmp_path: Path, transport: str,
) -> None:
    pbx = make_pbx(shipped=True, netns=lan.server_name)
    caller = baresip_phone(make_phone, lan, tmp_path, "1001", transport)
    callee = baresip_phone(make_phone, lan, tmp_path, "1002", transport)
    caller.wait_registered()
    callee.wait_registered()

    caller.command("dial", f"sip:1002@{DOMAIN}")
    incoming = callee.wait_event("CALL_INCOMING", EVENT_TIMEOUT_S)
    assert incoming["peeruri"] == f"sip:1001@{DOMAIN}"
    callee.command("accept")
    caller.wait_event("CALL_ESTABLISHED", EVENT_TIMEOUT_S)
    callee.wait_event("CALL_ESTABLISHED", EVENT_TIMEOUT_S)
    wanted = int(TALK_S * SAMPLE_RATE * 2)  # 16-bit samples
    wait_for(lambda: min(bytes_heard(caller), bytes_heard(callee)) >= wanted,
             TALK_S + 10, f"{TALK_S} s of audio at both phones")

    caller.command("hangup")
    closed = callee.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert closed["param"] == "Connection reset by peer"  # the caller's BYE, relayed
    caller.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)

    row = the_cdr(pbx)
    assert (row["answered_by"], row["hangup_by"], row["status"]) == ("1002", "caller", 200)
    assert float(row["duration_s"]) >= TALK_S  # type: ignore[arg-type]
    assert_heard_tone(heard(callee), "1002", TONES_HZ["1001"])
    assert_heard_tone(heard(caller), "1001", TONES_HZ["1002"])
    for phone in (caller, callee):
        assert_no_loopback_sent(phone)


@requires_linphone
def test_linphone_calls_baresip(
    lan: Netns, make_pbx: Callable[..., Pbx], make_phone: Callable[..., Phone],
    make_linphone: Callable[..., Linphone], tmp_path: Path,
) -> None:
    pbx = make_pbx(shipped=True, netns=lan.server_name)
    callee = baresip_phone(make_phone, lan, tmp_path, "1002", "udp")
    linphone_config = phone_example("linphonerc", {EXAMPLE_PBX_ADDRESS: PBX_HOST})
    caller = make_linphone(config=linphone_config, host=PHONE_HOSTS["1001"], netns=lan)
    caller.wait_registered()
    callee.wait_registered()
    wait_for(lambda: [row["aor"] for row in pbx.bindings()] == ["1001", "1002"], 5.0,
             "both bindings saved")

    since = caller.command(f"call sip:1002@{DOMAIN}")
    incoming = callee.wait_event("CALL_INCOMING", EVENT_TIMEOUT_S)
    assert incoming["peeruri"] == f"sip:1001@{DOMAIN}"
    callee.command("accept")
    callee.wait_event("CALL_ESTABLISHED", EVENT_TIMEOUT_S)
    caller.wait_output(r"Call \d+ with \S+ connected", EVENT_TIMEOUT_S, since)
    caller.command(f"play {make_tone(tmp_path, TONES_HZ['1001'])}")
    linphone_heard = tmp_path / "linphone-heard.wav"
    caller.command(f"record {linphone_heard}")
    wanted = int(TALK_S * SAMPLE_RATE * 2)
    wait_for(lambda: bytes_heard(callee) >= wanted, TALK_S + 10,
             f"{TALK_S} s of audio at baresip")
    wait_for(lambda: linphone_heard.exists() and linphone_heard.stat().st_size >= wanted,
             TALK_S + 10, f"{TALK_S} s of audio at Linphone")

    since = caller.command("terminate")
    closed = callee.wait_event("CALL_CLOSED", EVENT_TIMEOUT_S)
    assert closed["param"] == "Connection reset by peer"  # Linphone's BYE, relayed
    caller.wait_output(r"Call \d+ with \S+ ended", EVENT_TIMEOUT_S, since)

    row = the_cdr(pbx)
    assert (row["answered_by"], row["hangup_by"], row["status"]) == ("1002", "caller", 200)
    assert_heard_tone(heard(callee), "1002", TONES_HZ["1001"])
    assert_heard_tone(linphone_heard, "1001 (Linphone)", TONES_HZ["1002"])
    assert_no_loopback_sent(callee)
    assert caller.stop() == 0, caller.output()
    # Quitting unregisters: only the baresip phone is left.
    wait_for(lambda: [row["aor"] for row in pbx.bindings()] == ["1002"], 5.0,
             "Linphone's binding to go")
