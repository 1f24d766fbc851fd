"""`PbxService` as a tree of named children: the order things start and stop, and a reload
that changes only the listener that changed (real sockets on 127.0.0.1)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent

from pbx.transport.tls import ensure_self_signed
from tests.service.conftest import PASSWORDS
from tests.service.test_lifecycle import free_tcp_port, occupied

CHILDREN = ["store", "listeners", "calls", "flush", "housekeeping", "plugins"]

ORDER_PLUGIN = '''
from twisted.logger import Logger

log = Logger(namespace="order")


class Order:
    name = "order"

    async def start(self, api):
        self.api = api
        log.info("Plugin started; 1001 registered: {seen}", seen=api.users.is_registered("1001"))

    async def stop(self):
        log.info("Plugin stopping")


def create_plugin(settings):
    return Order()
'''


def lines(events: EventLoggingObserver) -> list[str]:
    return [formatEvent(event) for event in events]


def position(logged: list[str], start: str) -> int:
    """Where the first line starting with `start` was logged."""
    found = [index for index, line in enumerate(logged) if line.startswith(start)]
    assert found, f"nothing logged starting with {start!r}"
    return found[0]


@pytest_twisted.ensureDeferred
async def test_the_service_is_a_tree_of_named_children_in_start_order(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    service = pbx.service

    assert [child.name for child in service] == CHILDREN
    assert sorted(service.namedServices) == sorted(CHILDREN)
    listeners = service.getServiceNamed("listeners")
    assert [listener.name for listener in listeners] == ["udp", "tcp", "tls", "ws", "wss"]
    assert all(child.running for child in service)
    assert all(listener.running for listener in listeners)


@pytest_twisted.ensureDeferred
async def test_the_store_opens_before_listening_and_closes_after_everything_else(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    first = await pbx_factory()
    assert (await (await first.phone("1001")).register()).status == 200
    await first.stop()
    plugin = tmp_path / "order.py"
    plugin.write_text(ORDER_PLUGIN)
    earlier = len(lines(log_events))

    second = await pbx_factory({"plugins": {"order": {"module": str(plugin)}}})
    started = lines(log_events)[earlier:]
    await second.stop()
    stopped = lines(log_events)[earlier + len(started):]

    # The last run's binding is loaded before any phone can reach the PBX, and the
    # plugin starts once the core is up: it sees the registration.
    assert (position(started, "Loaded 1 binding(s) from")
            < position(started, "Listening for SIP over UDP")
            < position(started, "Listening for SIP over WSS")
            < position(started, "Plugin started; 1001 registered: True"))
    # The plugin stops first; the listeners stop before the store saves and closes.
    assert (position(stopped, "Plugin stopping")
            < position(stopped, "Stopped listening for SIP over WSS")
            < position(stopped, "Stopped listening for SIP over UDP")
            < position(stopped, "Stopped; bindings saved"))
    assert not any(child.running for child in second.service)


# ------------------------------------------------------------------- reload


def config_text(tmp_path: Path, *, tcp: str, plugins: str = "") -> str:
    return "\n".join([
        "[pbx]", f'data_dir = "{tmp_path / "data"}"',
        "[sip]", 'domain = "pbx.test"', 'udp = "127.0.0.1:0"', f'tcp = "{tcp}"',
        "[security]", f'log_file = "{tmp_path / "security.log"}"',
        *(f'[users.{user}]\npassword = "{PASSWORDS[user]}"' for user in ("1001", "1002")),
        plugins, ""])


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest_twisted.ensureDeferred
async def test_reload_replaces_a_changed_listener_and_leaves_the_others_alone(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(tmp_path, tcp="127.0.0.1:0"))
    pbx = await pbx_factory(from_file=path)
    udp_port = pbx.service.ports["udp"]
    udp_address = pbx.address("udp")
    _, old_tcp = pbx.address("tcp")
    over_udp = await pbx.phone("1001", "udp")
    over_old_tcp = await pbx.phone("1002", "tcp")
    assert (await over_udp.register()).status == 200
    assert (await over_old_tcp.register()).status == 200
    new_tcp = free_tcp_port()
    path.write_text(config_text(tmp_path, tcp=f"127.0.0.1:{new_tcp}"))

    assert pbx.service.reload() is True
    assert await pbx.service.listeners_settled == ["tcp"]

    assert pbx.service.ports["udp"] is udp_port  # the very socket, untouched
    assert pbx.address("udp") == udp_address
    assert pbx.address("tcp") == ("127.0.0.1", new_tcp)
    assert refuses_connections(old_tcp)
    assert (await (await pbx.phone("1001", "tcp")).register()).status == 200
    # A phone's connection outlives the listener that accepted it; UDP phones see nothing.
    assert (await over_old_tcp.register()).status == 200
    assert (await over_udp.register()).status == 200
    logged = lines(log_events)
    assert any(line.endswith("; applied ['sip.tcp']") for line in logged)
    assert f"Stopped listening for SIP over TCP on 127.0.0.1:{old_tcp}" in logged
    assert f"Listening for SIP over TCP on 127.0.0.1:{new_tcp}" in logged
    assert not any("Stopped listening for SIP over UDP" in line for line in logged)


@pytest_twisted.ensureDeferred
async def test_reload_onto_a_port_in_use_keeps_the_old_listener(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(tmp_path, tcp="127.0.0.1:0"))
    pbx = await pbx_factory(from_file=path)
    before = pbx.address("tcp")
    with occupied(socket.SOCK_STREAM) as blocker:
        busy = blocker.getsockname()[1]
        path.write_text(config_text(tmp_path, tcp=f"127.0.0.1:{busy}"))

        assert pbx.service.reload() is True
        assert await pbx.service.listeners_settled == []

    assert pbx.address("tcp") == before
    assert (await (await pbx.phone("1001", "tcp")).register()).status == 200
    errors = [formatEvent(event) for event in log_events
              if event.get("log_level") is LogLevel.error]
    assert any(line.startswith("Reload could not listen for SIP over TCP: ")
               and f"sip.tcp: cannot listen on 127.0.0.1:{busy}" in line
               and "in use" in line.lower() for line in errors), errors


@pytest_twisted.ensureDeferred
async def test_a_changed_plugin_table_is_named_as_needing_a_restart(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    plugin = tmp_path / "order.py"
    plugin.write_text(ORDER_PLUGIN)
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(tmp_path, tcp="127.0.0.1:0"))
    pbx = await pbx_factory(from_file=path)
    path.write_text(config_text(tmp_path, tcp="127.0.0.1:0",
                                plugins=f'[plugins.order]\nmodule = "{plugin}"'))

    assert pbx.service.reload() is True

    warnings = [formatEvent(event) for event in log_events
                if event.get("log_level") is LogLevel.warn]
    assert ("Changed plugins takes effect at the next restart: plugins are loaded and "
            "started at start-up") in warnings
    assert not any(line.startswith("Plugin started") for line in lines(log_events))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_a_listener_removed_on_reload_stops_and_comes_back_when_restored(
        pbx_factory: Any, tmp_path: Path, transport: str) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(config_text(tmp_path, tcp="127.0.0.1:0"))
    pbx = await pbx_factory(from_file=path)
    other = "tcp" if transport == "udp" else "udp"
    text = path.read_text()
    path.write_text(text.replace(f'{transport} = "127.0.0.1:0"\n', ""))

    assert pbx.service.reload() is True
    assert await pbx.service.listeners_settled == [transport]
    assert set(pbx.service.ports) == {other}
    path.write_text(text)
    assert pbx.service.reload() is True
    assert await pbx.service.listeners_settled == [transport]

    assert set(pbx.service.ports) == {"udp", "tcp"}
    assert (await (await pbx.phone("1001", transport)).register()).status == 200


def served_certificate(port: int) -> bytes:
    """The certificate the TLS listener on `port` presents (DER), as a phone first sees it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as wrapped:
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


@pytest_twisted.ensureDeferred
async def test_a_new_certificate_replaces_the_tls_listener_and_a_bad_one_is_refused(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    first_cert, first_key, _ = ensure_self_signed(tmp_path / "first", "pbx.test")
    second_cert, second_key, _ = ensure_self_signed(tmp_path / "second", "pbx.test")
    path = tmp_path / "pbx.toml"

    def write(cert: Path, key: Path) -> None:
        path.write_text(config_text(tmp_path, tcp="127.0.0.1:0").replace(
            "[security]", f'tls = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                          "[security]"))

    write(first_cert, first_key)
    pbx = await pbx_factory(from_file=path)
    udp_port = pbx.service.ports["udp"]
    _, port = pbx.address("tls")
    assert await deferToThread(served_certificate, port) == der_of(first_cert)

    write(second_cert, second_key)
    assert pbx.service.reload() is True
    assert await pbx.service.listeners_settled == ["tls"]

    _, port = pbx.address("tls")
    assert await deferToThread(served_certificate, port) == der_of(second_cert)
    assert pbx.service.ports["udp"] is udp_port

    write(second_cert, first_key)  # a key of another certificate
    assert pbx.service.reload() is True
    assert await pbx.service.listeners_settled == []

    assert await deferToThread(served_certificate, port) == der_of(second_cert)
    errors = [formatEvent(event) for event in log_events
              if event.get("log_level") is LogLevel.error]
    assert any(line.startswith("TLS listeners kept with the certificate in use: ")
               and "sip.tls_key" in line for line in errors), errors
