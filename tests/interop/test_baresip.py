"""baresip 1.0 registers with the real PBX over UDP, TCP and TLS.

baresip 1.0.0 (Debian 12) sits on libre 1.1.0, whose digest code knows
only MD5 and gives up on the whole 401 ("Register: Function not
implemented") as soon as it meets a challenge with another algorithm, even
after an MD5 one. These PBXs therefore offer MD5 alone; RFC 8760 §2.4 says
a client should skip challenges it cannot answer, which libre 1.1 does not.

TLS: libre 1.1 accepts any server certificate (its verify callback passes
everything, and baresip 1.0 has no setting to change that), so the phone
registers to the PBX's self-signed certificate either way. The phone is
still given that certificate as ``sip_cafile``, as a verifying phone would
need, and a verifying client (Python's ``ssl``) checks that the certificate
the PBX made is one a phone can trust for the names it carries.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import pytest

from tests.interop.conftest import DOMAIN, USERS, Pbx, Phone, requires_baresip

pytestmark = pytest.mark.interop


@requires_baresip
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_baresip_registers(
    make_pbx: Callable[..., Pbx], make_phone: Callable[..., Phone], transport: str
) -> None:
    pbx = make_pbx(digest_algorithms=("MD5",))
    port = pbx.tls_port if transport == "tls" else pbx.sip_port
    phone = make_phone(extension="1001", password=USERS["1001"], transport=transport,
                       pbx_port=port, cafile=pbx.certificate)

    info = phone.wait_registered(timeout_s=15)

    assert f"sip:1001@{DOMAIN}" in info
    pbx.stop()  # first, so the phone cannot unregister; the stop flushes to SQLite
    phone.kill()
    assert f"Registered 1001 from {transport}:127.0.0.1:" in pbx.log()
    [binding] = pbx.bindings()
    assert binding["aor"] == "1001"
    assert binding["transport"] == transport
    assert str(binding["user_agent"]).startswith("baresip")


@pytest.mark.parametrize("name", [DOMAIN, "localhost"])
def test_generated_certificate_verifies_for_its_names(
    make_pbx: Callable[..., Pbx], name: str
) -> None:
    pbx = make_pbx(digest_algorithms=("MD5",))
    context = ssl.create_default_context(cafile=str(pbx.certificate))

    with socket.create_connection(("127.0.0.1", pbx.tls_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        certificate = tls.getpeercert()

    assert certificate is not None
    assert (("commonName", DOMAIN),) in certificate["subject"]
