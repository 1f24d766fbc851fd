"""SIPp against the real PBX: REGISTER with digest auth, refusals, restarts.

SIPp answers only the first challenge and only with MD5, so these PBXs
offer MD5 first (``digest_algorithms = ["MD5", "SHA-256"]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.conftest import USERS, Pbx, free_port, requires_sipp, run_sipp

pytestmark = [pytest.mark.interop, requires_sipp]


@pytest.mark.parametrize(("sipp_transport", "transport"), [("u1", "udp"), ("t1", "tcp")])
def test_register_with_digest_is_saved(
    pbx: Pbx, tmp_path: Path, sipp_transport: str, transport: str
) -> None:
    local_port = free_port(avoid=(pbx.sip_port, pbx.tls_port))

    run = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port,
                   transport=sipp_transport, local_port=local_port)

    assert run.returncode == 0, run.output + run.errors
    pbx.stop()  # a clean stop flushes pending binding changes to SQLite
    assert "Registered 1001 from " + transport in pbx.log()
    [binding] = pbx.bindings()
    assert binding["aor"] == "1001"
    assert binding["transport"] == transport
    assert binding["contact"] == (
        f"sip:1001@127.0.0.1:{local_port};transport={transport.upper()}")
    assert binding["source_host"] == "127.0.0.1"


def test_wrong_password_fails_and_is_logged(pbx: Pbx, tmp_path: Path) -> None:
    run = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port,
                   users=[("1001", "not-" + USERS["1001"])])

    assert run.returncode != 0
    # The answer to the wrong credentials is a fresh challenge, not a 200.
    assert "while expecting '200'" in run.errors
    assert "received 'SIP/2.0 401 Unauthorized" in run.errors
    pbx.stop()
    assert "Security: wrong-password from 127.0.0.1 user=1001" in pbx.log()
    assert "wrong-password from 127.0.0.1 user=1001" in pbx.security_log.read_text()
    assert "Registered 1001" not in pbx.log()
    assert pbx.bindings() == []


def test_binding_survives_a_restart(pbx: Pbx, tmp_path: Path) -> None:
    local_port = free_port(avoid=(pbx.sip_port, pbx.tls_port))
    registered = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port,
                          local_port=local_port)
    assert registered.returncode == 0, registered.output + registered.errors
    contact = f"sip:1001@127.0.0.1:{local_port};transport=UDP"

    pbx.stop()
    pbx.start()

    assert "Loaded 1 binding(s)" in pbx.log()
    query = run_sipp(tmp_path / "sipp", "register_query.xml", pbx.sip_port,
                     extra=["-set", "expected_contact", contact])
    assert query.returncode == 0, query.output + query.errors
    assert f"listed contact: {contact}" in query.logs
    # The scenario's check is not vacuous: another contact fails it.
    other = run_sipp(tmp_path / "sipp", "register_query.xml", pbx.sip_port,
                     extra=["-set", "expected_contact", contact.replace("UDP", "TCP")])
    assert other.returncode != 0
