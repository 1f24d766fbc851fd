"""`twistd pbx` as an operator starts it: a real process, its log, its memory maps."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TWISTD = Path(sys.executable).parent / "twistd"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def options(port: int) -> bytes:
    return (
        f"OPTIONS sip:pbx.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-twistd-1;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@pbx.test>;tag=1\r\nTo: <sip:pbx.test>\r\n"
        "Call-ID: twistd-probe@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def start_twistd(tmp_path: Path, lines: list[str], *,
                 interruptible: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    """`twistd -n pbx` on `lines` of config, as an operator starts it; and its log.

    ``interruptible``: SIGINT at its default, as in a terminal where Ctrl-C
    reaches it (a shell starting a job in the background ignores SIGINT for it).
    """
    config = tmp_path / "pbx.toml"
    config.write_text("\n".join(lines) + "\n")
    log = tmp_path / "pbx.log"

    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile", str(tmp_path / "pbx.pid"), "--logfile", str(log),
         "pbx", "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=default_sigint if interruptible else None)
    return process, log


def answer_to_options(process: subprocess.Popen[bytes], log: Path, udp: int) -> bytes:
    """Ask the PBX on UDP port `udp` until it answers (30 s at most)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind(("127.0.0.1", 0))
        phone.settimeout(0.25)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text() if log.exists() else "no log"
            phone.sendto(options(phone.getsockname()[1]), ("127.0.0.1", udp))
            try:
                return phone.recv(4096)
            except TimeoutError:
                continue
    return b""


@pytest.mark.parametrize("with_tls", [False, True])
def test_tls_support_is_loaded_only_with_a_tls_listener(tmp_path: Path, with_tls: bool) -> None:
    # pyOpenSSL and cryptography cost 12 MB resident: a PBX on UDP alone
    # leaves them out (pbx.memory.leave_tls_unloaded), one with TLS has them.
    udp = free_port(socket.SOCK_DGRAM)
    lines = ["[pbx]", f'data_dir = "{tmp_path / "data"}"',
             "[sip]", 'domain = "pbx.test"', f'udp = "127.0.0.1:{udp}"']
    if with_tls:
        lines.append(f'tls = "127.0.0.1:{free_port(socket.SOCK_STREAM)}"')
    lines += ["[users.1001]", 'password = "secret"']
    process, log = start_twistd(tmp_path, lines)
    try:
        answer = answer_to_options(process, log, udp)
        assert answer.startswith(b"SIP/2.0 200"), answer
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert ("cryptography" in maps) == with_tls, "cryptography's library mapped"
        assert ("Listening for SIP over TLS" in log.read_text()) == with_tls
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    # A clean stop re-raises SIGTERM (twisted.application.app._exitWithSignal).
    assert process.returncode in (0, -signal.SIGTERM)
    assert log.read_text().rstrip().endswith("Server Shut Down.")


def test_ctrl_c_stops_it_cleanly(tmp_path: Path) -> None:
    """What `make run` promises: Ctrl-C (SIGINT) saves the bindings and shuts down."""
    udp = free_port(socket.SOCK_DGRAM)
    process, log = start_twistd(tmp_path, [
        "[pbx]", f'data_dir = "{tmp_path / "data"}"',
        "[sip]", 'domain = "pbx.test"', f'udp = "127.0.0.1:{udp}"',
        "[users.1001]", 'password = "secret"'], interruptible=True)
    try:
        assert answer_to_options(process, log, udp).startswith(b"SIP/2.0 200")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Received SIGINT, shutting down." in text
    assert "Stopped; bindings saved" in text
    assert text.rstrip().endswith("Server Shut Down.")
    assert process.returncode in (0, -signal.SIGINT)


def run_twistd(tmp_path: Path, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`twistd pbx --config FILE ...` to its end, as an operator types it; its output kept."""
    return subprocess.run(
        [str(TWISTD), "-n", "--pidfile", str(tmp_path / "pbx.pid"),
         "--logfile", str(tmp_path / "pbx.log"), "pbx", "--config", str(config), *extra],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        check=False)


BAD_CONFIG = [
    "[sip]", 'domain = "pbx.test"', 'udp = "127.0.0.1:5060x"',
    "[registrar]", "min_expires_s = 0",
]


def bad_config_problems(config: Path) -> list[str]:
    return [
        f'{config}: sip.udp: expected "address:port" such as "0.0.0.0:5060" or "[::1]:5060",'
        ' got "127.0.0.1:5060x" (the port must be a number)',
        f"{config}: registrar.min_expires_s: expected an integer of at least 1, got 0",
    ]


@pytest.mark.parametrize("check", [True, False], ids=["check", "start"])
def test_a_bad_config_prints_only_its_problems(tmp_path: Path, check: bool) -> None:
    # twistd printed its whole usage text (a page of options) before them.
    config = tmp_path / "pbx.toml"
    config.write_text("\n".join(BAD_CONFIG) + "\n")

    result = run_twistd(tmp_path, config, *(["--check"] if check else []))

    assert result.returncode == 1
    assert result.stderr.splitlines() == bad_config_problems(config)
    assert result.stdout == ""
    assert not (tmp_path / "pbx.pid").exists()


def test_check_of_a_good_config_says_ok_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "pbx.toml"
    config.write_text("\n".join([
        "[pbx]", f'data_dir = "{tmp_path / "data"}"',
        "[sip]", 'domain = "pbx.test"', 'udp = "127.0.0.1:0"']) + "\n")

    result = run_twistd(tmp_path, config, "--check")

    assert (result.returncode, result.stdout, result.stderr) == (0, f"{config}: OK\n", "")
    assert not (tmp_path / "data").exists() and not (tmp_path / "pbx.log").exists()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def test_a_reload_adds_a_listener_and_names_tls_as_needing_a_restart(tmp_path: Path) -> None:
    """SIGHUP adds a TCP listener at once. A TLS one cannot come to a process that started
    without TLS (pbx.memory.leave_tls_unloaded): the log says to restart, and the rest runs."""
    udp, tcp, tls = (free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM),
                     free_port(socket.SOCK_STREAM))
    lines = ["[pbx]", f'data_dir = "{tmp_path / "data"}"',
             "[sip]", 'domain = "pbx.test"', f'udp = "127.0.0.1:{udp}"',
             "[users.1001]", 'password = "secret"']
    process, log = start_twistd(tmp_path, lines)
    try:
        assert answer_to_options(process, log, udp).startswith(b"SIP/2.0 200")
        lines[5:5] = [f'tcp = "127.0.0.1:{tcp}"', f'tls = "127.0.0.1:{tls}"']
        (tmp_path / "pbx.toml").write_text("\n".join(lines) + "\n")

        process.send_signal(signal.SIGHUP)

        deadline = time.monotonic() + 30
        while not accepts(tcp):  # until the reload has run
            assert time.monotonic() < deadline, log.read_text()
            # A round trip to the PBX: it has had a turn of its reactor.
            assert answer_to_options(process, log, udp).startswith(b"SIP/2.0 200")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    text = log.read_text()
    assert f"Listening for SIP over TCP on 127.0.0.1:{tcp}" in text
    assert "Reload could not listen for SIP over TLS: " in text, text
    assert "sip.tls, sip.wss: TLS support was left unloaded at start-up, when no listener " \
           "needed it; restart the PBX to add one" in text
    assert "Listening for SIP over TLS" not in text
