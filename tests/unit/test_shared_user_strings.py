"""Bindings keep the config's own str for their user, not a copy per REGISTER.

With 100,000 users registered, a copy of each user name in each binding
is some 5 MB; sharing the config's object costs nothing. Built on a `Clock`,
no sockets, as in test_housekeeping.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.core.location import Binding
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for, parse_auth_params
from pbx.sip.peer import Peer
from pbx.store import Store

PHONE = Peer("udp", "127.0.0.1", 5062)


def register(cseq: int, authorization: str | None) -> bytes:
    lines = [
        "REGISTER sip:pbx.test SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-shared-{cseq};rport",
        "Max-Forwards: 70",
        "From: <sip:1001@pbx.test>;tag=shared",
        "To: <sip:1001@pbx.test>",
        "Call-ID: shared-strings@127.0.0.1",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:1001@127.0.0.1:5062>",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join([*lines, "Expires: 600", "Content-Length: 0", "", ""])).encode()


def challenge_in(response: bytes) -> Challenge:
    for line in response.decode().split("\r\n"):
        if line.lower().startswith("www-authenticate:"):
            _, params = parse_auth_params(line.split(":", 1)[1].strip())
            return Challenge(realm=params["realm"], nonce=params["nonce"],
                             algorithm=params["algorithm"], qop=("auth",),
                             opaque=params.get("opaque"))
    raise AssertionError(f"no challenge in {response!r}")


def test_a_registered_binding_holds_the_configs_user_string(tmp_path: Path) -> None:
    config = parse_config({
        "pbx": {"data_dir": str(tmp_path)},
        "sip": {"domain": "pbx.test", "udp": "127.0.0.1:5060"},
        "registrar": {"digest_algorithms": ["MD5"]},
        "users": {"1001": {"password": "secret"}},
    }, str(tmp_path / "pbx.toml"))
    service = PbxService(config, reactor=Clock())
    sent: list[bytes] = []
    service.connections.udp_send = lambda data, host, port: sent.append(data)

    service.endpoint.receive_data(register(1, None), PHONE, datagram=True)
    credentials = authorization_for(challenge_in(sent[-1]), username="1001", password="secret",
                                    method="REGISTER", uri="sip:pbx.test", cnonce="c1")
    service.endpoint.receive_data(register(2, credentials.to_header_value()), PHONE,
                                  datagram=True)
    assert sent[-1].startswith(b"SIP/2.0 200")

    (binding,) = service.location.bindings("1001", Clock().seconds())
    assert binding.aor == "1001"
    assert binding.aor is config.users["1001"].extension


def test_loaded_bindings_take_the_aor_the_caller_gives(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "pbx.sqlite3")
    try:
        store.write_bindings([Binding(
            aor="1001", contact="sip:1001@127.0.0.1:5062", expires_at=600.0, call_id="c",
            cseq=1, transport="udp", source_host="127.0.0.1", source_port=5062,
            updated_at=0.0)], [])
        configured = "".join(["10", "01"])  # equal text, another object
        (loaded,) = store.load_bindings({"1001": configured}.__getitem__)
        assert loaded.aor is configured
        (plain,) = store.load_bindings()
        assert plain.aor == "1001"
    finally:
        store.close()
