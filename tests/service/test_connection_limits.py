"""Connection floods: a source over its limit, a table at the open-file limit, the limit itself.

Over real sockets on 127.0.0.1. A second source is 127.0.0.2 (all of
127.0.0.0/8 is loopback on Linux). The open-file limit is a real one, set
low for a twistd process as an operator's ``ulimit -n`` would.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent

from tests.service.conftest import PASSWORDS, RunningPbx, ticks
from tests.service.sipclient import Phone, StreamLink

TWISTD = Path(sys.executable).parent / "twistd"


async def link_from(reactor: Any, source: str, server: tuple[str, int]) -> StreamLink:
    """A TCP connection to `server` from the local address `source`."""
    link = StreamLink(reactor, "tcp")
    endpoint = TCP4ClientEndpoint(reactor, server[0], server[1], bindAddress=(source, 0))
    await connectProtocol(endpoint, link.protocol)
    link.local_host = source
    link.local_port = link.protocol.transport.getHost().port
    return link


def warnings_about(events: EventLoggingObserver, words: str) -> list[str]:
    return [text for event in events
            if event["log_level"] == LogLevel.warn and words in (text := formatEvent(event))]


@pytest_twisted.ensureDeferred
async def test_a_source_over_its_limit_is_refused_while_another_is_served(
        pbx_factory: Any, reactor: Any, log_events: EventLoggingObserver) -> None:
    pbx: RunningPbx = await pbx_factory({"sip": {"max_connections_per_source": 3}})
    held = [await pbx.link(transport) for transport in ("tcp", "tcp", "tls")]

    # Over the limit, on any transport: closed as soon as accepted.
    refused = [await StreamLink.open(reactor, "tcp", pbx.address(transport))
               for transport in ("tcp", "tls", "ws", "tcp", "tcp")]
    pbx.links.extend(refused)
    for link in refused:
        await link.closed_within(2.0)

    # Another address connects and is answered; the first source's own
    # connections are untouched.
    other = Phone(await link_from(reactor, "127.0.0.2", pbx.address("tcp")), "1002",
                  PASSWORDS["1002"])
    pbx.links.append(other.link)
    assert (await other.request("OPTIONS")).status == 200
    assert not any(link.is_closed for link in held)
    # Logged once, not once per refused connection.
    lines = warnings_about(log_events, "Refused a connection from 127.0.0.1")
    assert len(lines) == 1, lines
    assert "the most one address may (sip.max_connections_per_source)" in lines[0]


# --------------------------------------------------- the open-file limit (twistd)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def twistd_with_file_limit(tmp_path: Path, soft: int, hard: int, sip: list[str]
                           ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`twistd -n pbx` started under ``ulimit -Sn soft -Hn hard``; stopped afterwards."""
    config = tmp_path / "pbx.toml"
    config.write_text("\n".join([
        "[pbx]", f'data_dir = "{tmp_path / "data"}"',
        "[sip]", 'domain = "pbx.test"', *sip,
        "[registrar]", "min_expires_s = 60",
        "[users.1001]", f'password = "{PASSWORDS["1001"]}"']) + "\n")
    log = tmp_path / "pbx.log"

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile", str(tmp_path / "pbx.pid"), "--logfile", str(log),
         "pbx", "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limited)
    try:
        yield process, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_line(process: subprocess.Popen[bytes], log: Path, words: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text() if log.exists() else "no log"
        if log.exists():
            for line in log.read_text().splitlines():
                if words in line:
                    return line
        time.sleep(0.05)
    raise AssertionError(f"no {words!r} in the log:\n{log.read_text()}")


def test_the_soft_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    tcp = free_port(socket.SOCK_STREAM)
    with twistd_with_file_limit(tmp_path, 256, 4096, [f'tcp = "127.0.0.1:{tcp}"']) as (
            process, log):
        line = wait_for_line(process, log, "Listening for SIP over TCP")
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        text = log.read_text()

    assert line
    assert "Open-file limit raised from 256 to 4096: at most 3996 stream connections" in text
    open_files = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert open_files.split()[3:5] == ["4096", "4096"]


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the PBX has closed (or reset) this idle connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


async def until(reactor: Any, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"still not true after {timeout_s} s"
        await ticks(reactor, 0.02)


@pytest_twisted.ensureDeferred
async def test_a_connection_flood_at_the_file_limit_closes_the_oldest_idle_ones(
        tmp_path: Path, reactor: Any) -> None:
    # 1,006 idle connections locked every new one out for 600 s, and each
    # refused accept logged about three EMFILE lines. With 200 descriptors
    # the PBX holds 100 connections, then closes the oldest idle one for each
    # newcomer: new phones are served, a registered phone's connection stays,
    # and the log says so once.
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    sip = [f'tcp = "127.0.0.1:{tcp}"', f'udp = "127.0.0.1:{udp}"',
           "max_connections_per_source = 1000"]
    with twistd_with_file_limit(tmp_path, 200, 200, sip) as (process, log):
        wait_for_line(process, log, "Listening for SIP over TCP")
        registered = Phone(await StreamLink.open(reactor, "tcp", ("127.0.0.1", tcp)),
                           "1001", PASSWORDS["1001"])
        assert (await registered.register()).status == 200

        flood: list[socket.socket] = []
        try:
            for _ in range(300):
                flood.append(socket.create_connection(("127.0.0.1", tcp), timeout=5))
                await ticks(reactor, 0.002)
            await until(reactor, lambda: sum(closed_by_peer(s) for s in flood[:150]) >= 150)

            newcomer = Phone(await StreamLink.open(reactor, "tcp", ("127.0.0.1", tcp)),
                             "1002")
            assert (await newcomer.request("OPTIONS")).status == 200
            assert (await registered.request("OPTIONS")).status == 200
            assert not registered.link.is_closed
            still_open = sum(not closed_by_peer(s) for s in flood)
        finally:
            for sock in flood:
                sock.close()
            await registered.link.close()
        text = log.read_text()

    assert "Open-file limit 200: at most 100 stream connections" in text
    assert 0 < still_open <= 100
    assert text.count("Closed the connection idle longest") == 1
    assert "EMFILE" not in text and errno.errorcode[errno.EMFILE] not in text
    assert "Could not accept" not in text
