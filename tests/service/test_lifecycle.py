"""What an administrator does to a running PBX: restart it, reload it, start it wrongly."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from pbx.config import parse_config
from pbx.service import PbxService
from tests.service.conftest import PASSWORDS, config_data, eventually, merged
from tests.service.test_register import contact_expires

# ------------------------------------------------------------------ restart


@pytest_twisted.ensureDeferred
async def test_bindings_survive_a_restart(pbx_factory: Any) -> None:
    first = await pbx_factory()
    desk = await first.phone("1001", "udp")
    assert (await desk.register(expires=600)).status == 200
    # Stopped at once: the clean stop itself writes what is pending.
    await first.stop()

    second = await pbx_factory()
    query = await (await second.phone("1001", "tcp")).register(contacts=[], expires=None)

    assert query.status == 200
    listed = contact_expires(query)
    assert list(listed) == [desk.contact_uri]
    assert 590 <= listed[desk.contact_uri] <= 600
    assert [row["transport"] for row in second.rows("1001")] == ["udp"]


# ------------------------------------------------------------------- reload


def config_text(users: dict[str, str]) -> str:
    lines = [
        "[pbx]", 'data_dir = "data"', "",
        "[sip]", 'domain = "pbx.test"', 'udp = "127.0.0.1:0"', 'tcp = "127.0.0.1:0"', "",
        "[security]", 'log_file = "security.log"', "",
    ]
    for extension, password in users.items():
        lines += [f"[users.{extension}]", f'password = "{password}"', ""]
    return "\n".join(lines)


def users(*extensions: str) -> dict[str, str]:
    return {extension: PASSWORDS[extension] for extension in extensions}


@pytest_twisted.ensureDeferred
async def test_reload_swaps_the_users(pbx_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(users("1001", "1002")))
    pbx = await pbx_factory(from_file=path)
    assert pbx.data_dir == tmp_path / "data"
    leaving = await pbx.phone("1002")
    assert (await leaving.register()).status == 200
    await pbx.rows_when(bool, "1002")

    path.write_text(config_text(users("1001", "1004")))
    assert pbx.service.reload() is True

    await pbx.rows_when(lambda rows: rows == [], "1002")
    challenge = await leaving.request("REGISTER", contacts=[f"<{leaving.contact_uri}>"])
    assert challenge.status == 401
    refused = await leaving.request("REGISTER", contacts=[f"<{leaving.contact_uri}>"],
                                    authorization=leaving.answer(challenge))
    assert refused.status == 401
    newcomer = await pbx.phone("1004", "tcp")
    assert (await newcomer.register()).status == 200
    assert (await (await pbx.phone("1001")).register()).status == 200


@pytest_twisted.ensureDeferred
async def test_broken_config_is_refused_and_the_old_one_kept(
        pbx_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(users("1001", "1002")))
    pbx = await pbx_factory(from_file=path)

    path.write_text(config_text(users("1004")) + "\n[sip\n")  # a typo
    assert pbx.service.reload() is False
    path.write_text(config_text(users("1004")).replace("password =", "passwrd ="))
    assert pbx.service.reload() is False

    for extension in ("1001", "1002"):
        assert (await (await pbx.phone(extension)).register()).status == 200
    stranger = await pbx.phone("1004")
    assert (await stranger.register()).status == 401


@pytest_twisted.ensureDeferred
async def test_sighup_reloads(pbx_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(users("1001")))
    pbx = await pbx_factory(from_file=path)
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
    path.write_text(config_text(users("1001", "1004")))

    os.kill(os.getpid(), signal.SIGHUP)

    await eventually(pbx.reactor, lambda: "1004" in pbx.service.config.users)
    assert (await (await pbx.phone("1004")).register()).status == 200


# --------------------------------------------------------- start-up failure


@contextlib.contextmanager
def occupied(kind: int, port: int = 0) -> Iterator[socket.socket]:
    """A socket of ours holding 127.0.0.1:port (listening, for TCP)."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        yield sock
    finally:
        sock.close()


def free_tcp_port() -> int:
    with occupied(socket.SOCK_STREAM) as sock:
        return int(sock.getsockname()[1])


def can_listen(port: int) -> bool:
    try:
        with occupied(socket.SOCK_STREAM, port):
            return True
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        return False


@pytest.mark.parametrize("taken", ["udp", "wss"])
@pytest_twisted.ensureDeferred
async def test_start_fails_cleanly_on_a_port_in_use(
        pbx_factory: Any, reactor: Any, tmp_path: Path, taken: str) -> None:
    kind = socket.SOCK_DGRAM if taken == "udp" else socket.SOCK_STREAM
    # Fixed ports for the stream listeners, so that we can check they were let go.
    ports = {name: free_tcp_port() for name in ("tcp", "tls", "ws")}
    listen = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    with occupied(kind) as blocker:
        busy = blocker.getsockname()[1]
        listen[taken] = f"127.0.0.1:{busy}"
        data = merged(config_data(tmp_path), {"sip": listen})
        config = parse_config(data, str(tmp_path / "pbx.toml"))
        service = PbxService(config, reactor=reactor)

        with pytest.raises(SystemExit) as failed:
            service.privilegedStartService()

        message = str(failed.value)
        assert str(tmp_path / "pbx.toml") in message
        assert f"sip.{taken}" in message
        assert f"127.0.0.1:{busy}" in message
        assert "in use" in message.lower()
        # Every listener bound before the failing one has been let go.
        for port in ports.values():
            await eventually(reactor, lambda port=port: can_listen(port))
        assert not service.running

    # With the port free, the same config starts and serves.
    pbx = await pbx_factory({"sip": listen})
    assert (await (await pbx.phone("1001", taken)).register()).status == 200



# ------------------------------------------------------------- stop, expiry


@pytest_twisted.ensureDeferred
async def test_stop_closes_phones_connections(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phones = [await pbx.phone("1001", transport) for transport in ("tcp", "tls", "ws", "wss")]
    for phone in phones:
        assert (await phone.register()).status == 200

    await pbx.service.stopService()
    pbx.running = False

    for phone in phones:
        await phone.link.closed_within(2.0)
    assert len(pbx.rows("1001")) == 4


@pytest_twisted.ensureDeferred
async def test_expired_binding_disappears(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"registrar": {"min_expires_s": 1}})
    phone = await pbx.phone("1001")
    assert contact_expires(await phone.register(expires=1)) == {phone.contact_uri: 1}
    await pbx.rows_when(bool, "1001")

    await pbx.rows_when(lambda rows: rows == [], "1001", timeout=2.5)

    query = await phone.request("REGISTER", authorization=phone.again())
    assert query.status == 200
    assert query.contacts == []


@pytest_twisted.ensureDeferred
async def test_json_log_format_writes_one_event_per_line(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"pbx": {"log_format": "json"}})
    phone = await pbx.phone("1001")
    assert (await phone.register()).status == 200
    path = pbx.data_dir / "pbx.log.json"
    events = []
    for line in path.read_text().splitlines():
        if line.strip():
            events.append(json.loads(line.strip("\x1e")))
    answered = [e for e in events if e.get("method") == "REGISTER" and e.get("status") == 200]
    assert answered, events[-3:]
    assert answered[0]["log_level"]["name"] == "info"
