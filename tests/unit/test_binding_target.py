"""Where calls to a registered contact go: its own address, or the flow it registered over.

RFC 3261 §10.2 lets one socket register another's contact (a script
registering an answering machine); a phone behind NAT can only be reached
through the address its REGISTER came from. These tests play a REGISTER
through the real endpoint (digest and all, no sockets) and ask the call
manager where an INVITE to the extension would be sent.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for, parse_auth_params
from pbx.sip.peer import Peer
from pbx.store import DATABASE_FILENAME, MIGRATIONS, BindingWriter, Database, Store

DOMAIN = "pbx.test"
SCRIPT = Peer("udp", "127.0.0.1", 40000)
"""The registering socket: a helper script, or the phone itself."""


@pytest.fixture
def service(tmp_path: Path) -> PbxService:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": DOMAIN, "udp": "127.0.0.1:5060"},
        "registrar": {"digest_algorithms": ["MD5"]},
        "users": {"1001": {"password": "secret"}},
    }, str(tmp_path / "pbx.toml"))
    return PbxService(config, reactor=Clock())


def register_message(contact: str, via_sent_by: str, cseq: int,
                     authorization: str | None = None, contact_params: str = "") -> bytes:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_sent_by};branch=z9hG4bK-reg-{cseq};rport",
        "Max-Forwards: 70",
        f"From: <sip:1001@{DOMAIN}>;tag=reg",
        f"To: <sip:1001@{DOMAIN}>",
        "Call-ID: third-party-1@127.0.0.1",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <{contact}>{contact_params}",
        "Expires: 3600",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def challenge_in(response: bytes) -> Challenge:
    for line in response.split(b"\r\n"):
        if line.lower().startswith(b"www-authenticate:"):
            _, params = parse_auth_params(line.split(b":", 1)[1].strip().decode())
            return Challenge(realm=params["realm"], nonce=params["nonce"],
                             algorithm=params.get("algorithm", "MD5"),
                             qop=tuple(params.get("qop", "").split(",")),
                             opaque=params.get("opaque"))
    raise AssertionError(f"no challenge in {response!r}")


def register(service: PbxService, contact: str, *, source: Peer = SCRIPT,
             via_sent_by: str | None = None, contact_params: str = "") -> Peer:
    """Register ``contact`` for 1001 from ``source``; where a call to 1001 would go."""
    sent: list[bytes] = []
    service.connections.udp_send = lambda data, host, port: sent.append(data)
    sent_by = via_sent_by or f"{source.host}:{source.port}"
    receive = service.endpoint.receive_data
    receive(register_message(contact, sent_by, 1, contact_params=contact_params),
            source, datagram=True)
    credentials = authorization_for(challenge_in(sent[-1]), username="1001",
                                    password="secret", method="REGISTER",
                                    uri=f"sip:{DOMAIN}", cnonce="c0ffee")
    receive(register_message(contact, sent_by, 2, credentials.to_header_value(),
                             contact_params=contact_params), source, datagram=True)
    assert sent[-1].startswith(b"SIP/2.0 200"), sent[-1]
    (target,) = service.calls.resolve("1001")
    assert target.request_uri == contact
    return target.peer


# -- called at the contact's own address -----------------------------------------------

def test_a_contact_on_another_port_of_the_registering_host_is_called_there(
    service: PbxService,
) -> None:
    """The third-party registration of RFC 3261 §10.2: a script registers a UAS."""
    assert register(service, "sip:1001@127.0.0.1:5072") == Peer("udp", "127.0.0.1", 5072)


def test_a_contact_without_a_port_is_called_on_5060(service: PbxService) -> None:
    assert register(service, "sip:1001@127.0.0.1") == Peer("udp", "127.0.0.1", 5060)


def test_a_sips_contact_is_called_over_tls_on_5061(service: PbxService) -> None:
    assert register(service, "sips:1001@127.0.0.1") == Peer("tls", "127.0.0.1", 5061)


def test_a_contact_asking_for_tcp_is_called_over_a_new_tcp_connection(
    service: PbxService,
) -> None:
    assert (register(service, "sip:1001@127.0.0.1:5072;transport=tcp")
            == Peer("tcp", "127.0.0.1", 5072))


def test_a_via_without_a_port_means_5060(service: PbxService) -> None:
    phone = Peer("udp", "127.0.0.1", 5060)
    assert (register(service, "sip:1001@127.0.0.1:5072", source=phone,
                     via_sent_by="127.0.0.1")
            == Peer("udp", "127.0.0.1", 5072))


def test_an_ipv6_contact_on_the_registering_host_is_called_there(
    service: PbxService,
) -> None:
    phone = Peer("udp", "::1", 40000)
    assert (register(service, "sip:1001@[::1]:5072", source=phone,
                     via_sent_by="[::1]:40000")
            == Peer("udp", "::1", 5072))


# -- called through the flow the REGISTER came in on -----------------------------------

def test_a_contact_on_another_host_is_called_through_the_flow(service: PbxService) -> None:
    """A phone behind NAT writes its private address; only the NAT's mapping reaches it."""
    behind_nat = Peer("udp", "203.0.113.7", 40000)
    assert register(service, "sip:1001@192.168.1.20:5060", source=behind_nat,
                    via_sent_by="192.168.1.20:5060") == behind_nat


def test_a_port_rewritten_by_a_nat_is_called_through_the_flow(service: PbxService) -> None:
    """Same host in the contact as the source, but the Via's port is not the source's.

    The phone's own port is not what the world sees, so its contact port
    means nothing from here either (a NAT on the same address, or a
    port-translating firewall).
    """
    assert register(service, "sip:1001@127.0.0.1:5072",
                    via_sent_by="127.0.0.1:5072") == SCRIPT


def test_a_via_naming_another_host_is_called_through_the_flow(service: PbxService) -> None:
    assert register(service, "sip:1001@127.0.0.1:5072",
                    via_sent_by="10.0.0.9:40000") == SCRIPT


def test_an_outbound_contact_is_called_through_the_flow(service: PbxService) -> None:
    """RFC 5626: ``ob`` asks that requests come back over the flow."""
    assert register(service, "sip:1001@127.0.0.1:5072;ob") == SCRIPT


def test_a_contact_with_a_reg_id_is_called_through_the_flow(service: PbxService) -> None:
    params = ';reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'
    assert register(service, "sip:1001@127.0.0.1:5072", contact_params=params) == SCRIPT


def test_a_contact_with_a_host_name_is_called_through_the_flow(service: PbxService) -> None:
    """A name this side would resolve on its own may not be where the phone is."""
    assert register(service, "sip:1001@localhost:5072") == SCRIPT


def test_a_websocket_contact_is_called_through_the_flow(service: PbxService) -> None:
    """The PBX cannot open a WebSocket to a phone."""
    assert register(service, "sip:1001@127.0.0.1:5072;transport=ws") == SCRIPT


def test_a_contact_naming_maddr_is_called_through_the_flow(service: PbxService) -> None:
    assert register(service, "sip:1001@127.0.0.1:5072;maddr=10.0.0.9") == SCRIPT


def test_a_registration_over_tcp_is_called_over_its_connection(
    service: PbxService,
) -> None:
    """A stream: the phone's connection is the only sure way back (as before)."""
    sent: list[bytes] = []
    phone = Peer("tcp", "127.0.0.1", 40000, connection_id=7)

    class Connection:
        """The phone's end of an accepted TCP connection, as the table sees it."""

        connection_id = 7
        sip_peer = phone

        def send_message(self, data: bytes) -> None:
            sent.append(data)

        def close(self) -> None:
            pass

    service.connections.add(Connection())
    contact = "sip:1001@127.0.0.1:5072;transport=tcp"
    receive = service.endpoint.receive_data

    def message(cseq: int, authorization: str | None = None) -> bytes:
        return register_message(contact, "127.0.0.1:40000", cseq, authorization).replace(
            b"SIP/2.0/UDP", b"SIP/2.0/TCP")

    receive(message(1), phone, datagram=False)
    credentials = authorization_for(challenge_in(sent[-1]), username="1001",
                                    password="secret", method="REGISTER",
                                    uri=f"sip:{DOMAIN}", cnonce="c0ffee")
    receive(message(2, credentials.to_header_value()), phone, datagram=False)
    assert sent[-1].startswith(b"SIP/2.0 200")
    (target,) = service.calls.resolve("1001")
    assert target.peer == phone


# -- across a restart ------------------------------------------------------------------

def test_the_verdict_survives_a_restart(service: PbxService, tmp_path: Path) -> None:
    """Bindings are reloaded from SQLite at start-up: calls still go to the contact."""
    register(service, "sip:1001@127.0.0.1:5072")
    (binding,) = service.location.bindings("1001", service.reactor.seconds())
    with Store.open(tmp_path / "db" / DATABASE_FILENAME) as store:
        writer = BindingWriter(store)
        writer.changes.record_update(binding)
        writer.flush()
    with Store.open(tmp_path / "db" / DATABASE_FILENAME) as store:
        (reloaded,) = store.load_bindings()
    assert reloaded == binding
    assert reloaded.target() == Peer("udp", "127.0.0.1", 5072)


def test_bindings_stored_before_the_verdict_existed_are_kept_and_use_the_flow(
    tmp_path: Path,
) -> None:
    """A database written by the previous schema: every row survives the migration."""
    path = tmp_path / DATABASE_FILENAME
    db = Database(sqlite3.connect(path))
    db.create_table("schema_version", {"version": int}, not_null=("version",), strict=True)
    db.execute("INSERT INTO schema_version (version) VALUES (0)")
    for number, migration in enumerate(MIGRATIONS[:2], start=1):
        migration(db)
        db.execute("UPDATE schema_version SET version = ?", (number,))
    db.execute(
        "INSERT INTO bindings (aor, contact, expires_at, q, call_id, cseq, transport,"
        " source_host, source_port, connection_id, instance_id, reg_id, user_agent,"
        " updated_at) VALUES ('1001', 'sip:1001@192.168.1.20:5060', 5000.0, 0.5,"
        " 'old@host', 3, 'udp', '203.0.113.7', 40000, NULL, NULL, NULL, 'Yealink', 900.0)")
    db.conn.commit()
    db.close()

    with Store.open(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        (binding,) = store.load_bindings()
    assert (binding.aor, binding.contact, binding.expires_at, binding.q, binding.call_id,
            binding.cseq, binding.user_agent, binding.updated_at) == (
        "1001", "sip:1001@192.168.1.20:5060", 5000.0, 0.5, "old@host", 3, "Yealink", 900.0)
    assert binding.reachable_as_given is False
    assert binding.target() == Peer("udp", "203.0.113.7", 40000)
