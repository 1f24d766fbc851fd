"""The registrar's digest defaults register every client the project is tested with.

These PBXs leave ``digest_algorithms`` and ``sha256_user_agents`` out of
their config, as the shipped ``etc/pbx.toml`` does. What each client was
seen to do on this machine (Debian 12) when offered both algorithms:

- baresip 1.0.0 (libre 1.1): gives up on a 401 carrying any SHA-256
  challenge ("Register: Function not implemented"), even after an MD5 one.
  User-Agent ``baresip v1.0.0 (x86_64/linux)``.
- SIPp 3.6: answers the first challenge only, and only MD5
  ("createAuthHeader: authentication must use MD5 or AKAv1-MD5" when
  SHA-256 comes first). User-Agent: what the scenario writes (``sipp``).
- linphonec 5.1.65 (belle-sip): answers the first challenge it can,
  SHA-256 when it comes first; when it holds only an MD5 hash of its
  password (it stores one after a registration) it falls back to the MD5
  challenge. After registering with SHA-256 it keeps only the SHA-256 hash
  (the password is gone from its rc file), and offered MD5 alone it then
  answers with a wrong digest. User-Agent ``Linphonec/5.1.65``.

So by default Linphone is offered SHA-256 then MD5 and everyone else MD5.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.conftest import (
    DOMAIN,
    USERS,
    Linphone,
    Pbx,
    Phone,
    free_port,
    phone_example,
    requires_baresip,
    requires_linphone,
    requires_sipp,
    run_sipp,
    wait_for,
)

pytestmark = pytest.mark.interop

def registered_line(pbx: Pbx, extension: str, port: int) -> str:
    """The PBX's log line for the first registration from 127.0.0.1:`port`."""
    pattern = re.compile(rf"Registered {extension} from udp:127\.0\.0\.1:{port} .*")

    def found() -> str | None:
        match = pattern.search(pbx.log())
        return match.group(0) if match is not None else None

    return str(wait_for(found, 20.0, f"{extension} to register from port {port}"))


@requires_baresip
def test_baresip_registers_with_the_default_and_is_offered_md5(
    make_pbx: Callable[..., Pbx], make_phone: Callable[..., Phone]
) -> None:
    pbx = make_pbx(digest_algorithms=None, debug=True)
    phone = make_phone(extension="1001", password=USERS["1001"], transport="udp",
                       pbx_port=pbx.sip_port)

    phone.wait_registered(timeout_s=15)

    line = registered_line(pbx, "1001", phone.sip_port)
    assert "(authenticated with MD5)" in line
    log = pbx.log()
    assert re.search(r"answered 401 Unauthorized offering MD5 to User-Agent 'baresip v1\.", log)
    # The debug log (item 7): the credentials are readable, the response hash is not.
    [authorization, *_] = [text.strip() for text in log.splitlines()
                           if text.strip().startswith("Authorization:")]
    assert 'username="1001"' in authorization and f'realm="{DOMAIN}"' in authorization
    assert "nonce=" in authorization and "uri=" in authorization
    assert "response=<redacted>" in authorization
    assert not re.search(r'response="?[0-9a-f]{32}', log)


@requires_linphone
def test_linphonec_registers_with_the_default_using_sha256(
    make_pbx: Callable[..., Pbx], make_linphone: Callable[..., Linphone]
) -> None:
    pbx = make_pbx(digest_algorithms=None)
    port = free_port(avoid=(pbx.sip_port,))
    # Set up as docs/phones/linphonerc shows, as extension 1002, the PBX on loopback.
    config = phone_example("linphonerc", {
        "192.0.2.10:5060": f"127.0.0.1:{pbx.sip_port}", "1001": "1002",
        "alice-change-me": USERS["1002"]})
    make_linphone(config=config, host="127.0.0.1", sip_port=port,
                  rtp_port=free_port(avoid=(pbx.sip_port, port)))

    line = registered_line(pbx, "1002", port)

    assert "(authenticated with SHA-256)" in line
    assert re.search(r"answered 401 Unauthorized offering SHA-256,MD5 to User-Agent "
                     r"'Linphonec/5\.", pbx.log())
    pbx.stop()
    [binding] = pbx.bindings()
    assert str(binding["user_agent"]).startswith("Linphonec/")


@requires_sipp
def test_sipp_registers_with_the_default(make_pbx: Callable[..., Pbx], tmp_path: Path) -> None:
    pbx = make_pbx(digest_algorithms=None)

    run = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port)

    assert run.returncode == 0, run.output + run.errors
    assert "offering MD5 to User-Agent 'sipp'" in pbx.log()
    assert re.search(r"Registered 1001 from udp:127\.0\.0\.1:\d+ \(authenticated with MD5\)",
                     pbx.log())
