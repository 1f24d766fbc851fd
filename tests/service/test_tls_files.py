"""A TLS certificate or key the PBX cannot use stops start-up naming the file and the mistake.

OpenSSL's own words were all the administrator got, without a file name:
``sip.tls: [('DECODER routines', '', 'unsupported'), ...]`` for a key file
that held a certificate. Real bad files here: a certificate given as the
key, garbage, a key of another certificate, an encrypted key, the two
swapped, and (over twistd, as an operator starts it) an unreadable one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization

from pbx.config import parse_config
from pbx.service import PbxService
from pbx.transport.tls import ensure_self_signed
from tests.service.conftest import config_data, merged

TWISTD = Path(sys.executable).parent / "twistd"


def pair(directory: Path) -> tuple[Path, Path]:
    """A real certificate and its key, made as the PBX makes its self-signed one."""
    cert, key, _ = ensure_self_signed(directory, "pbx.test")
    return cert, key


def start_with(tmp_path: Path, reactor: Any, cert: Path, key: Path) -> str:
    """Start a PBX with TLS from these files; the message it stops with."""
    data = merged(config_data(tmp_path), {"sip": {"tls_cert": str(cert), "tls_key": str(key)}})
    config = parse_config(data, str(tmp_path / "pbx.toml"))
    service = PbxService(config, reactor=reactor)
    with pytest.raises(SystemExit) as stopped:
        service.privilegedStartService()
    assert not service.ports, "no listener is left bound"
    return str(stopped.value)


@pytest.mark.parametrize("case", ["certificate", "garbage", "empty"])
@pytest_twisted.ensureDeferred
async def test_a_key_file_that_is_not_a_key(tmp_path: Path, reactor: Any, case: str) -> None:
    cert, _ = pair(tmp_path / "real")
    key = tmp_path / "pbx.key"
    if case == "certificate":
        key.write_bytes(cert.read_bytes())
    elif case == "garbage":
        key.write_bytes(os.urandom(300))
    else:
        key.write_bytes(b"")

    message = start_with(tmp_path, reactor, cert, key)

    expected = f"{tmp_path / 'pbx.toml'}: sip.tls_key: {key}: not a PEM private key"
    if case == "certificate":
        expected += " (it holds a certificate)"
    assert message == expected
    assert "DECODER" not in message


@pytest_twisted.ensureDeferred
async def test_a_key_that_does_not_match_the_certificate(tmp_path: Path, reactor: Any) -> None:
    cert, _ = pair(tmp_path / "one")
    _, other_key = pair(tmp_path / "other")

    message = start_with(tmp_path, reactor, cert, other_key)

    assert message == (f"{tmp_path / 'pbx.toml'}: sip.tls_key: {other_key}: does not match "
                       f"the certificate {cert} (the first in it)")


@pytest_twisted.ensureDeferred
async def test_an_encrypted_key(tmp_path: Path, reactor: Any) -> None:
    cert, key = pair(tmp_path / "real")
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))

    message = start_with(tmp_path, reactor, cert, encrypted)

    assert message.startswith(f"{tmp_path / 'pbx.toml'}: sip.tls_key: {encrypted}: the private "
                              "key is encrypted with a passphrase")


@pytest.mark.parametrize("case", ["garbage", "swapped"])
@pytest_twisted.ensureDeferred
async def test_a_certificate_file_that_is_not_a_certificate(
        tmp_path: Path, reactor: Any, case: str) -> None:
    cert, key = pair(tmp_path / "real")
    if case == "garbage":
        bad = tmp_path / "pbx.crt"
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
        message = start_with(tmp_path, reactor, bad, key)
        assert message == f"{tmp_path / 'pbx.toml'}: sip.tls_cert: {bad}: not a PEM certificate"
    else:
        message = start_with(tmp_path, reactor, key, cert)
        assert message == (f"{tmp_path / 'pbx.toml'}: sip.tls_cert: {key}: not a PEM "
                           "certificate (it holds a private key: are tls_cert and tls_key "
                           "swapped?)")


@pytest_twisted.ensureDeferred
async def test_a_certificate_with_its_chain_and_key_in_one_file_starts(
        pbx_factory: Any, tmp_path: Path) -> None:
    # The common "everything in one PEM" layout, given as both files, is good.
    cert, key = pair(tmp_path / "real")
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())

    pbx = await pbx_factory({"sip": {"tls_cert": str(both), "tls_key": str(both)}})

    assert (await (await pbx.phone("1001", "udp")).request("OPTIONS")).status == 200


def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    # Root reads every file; twistd runs here without that privilege
    # (setpriv drops it), as the PBX's own user would.
    cert, key = pair(tmp_path / "real")
    key.chmod(0)
    config = tmp_path / "pbx.toml"
    config.write_text("\n".join([
        "[pbx]", f'data_dir = "{tmp_path / "data"}"',
        "[sip]", 'domain = "pbx.test"', 'tls = "127.0.0.1:0"',
        f'tls_cert = "{cert}"', f'tls_key = "{key}"',
        "[users.1001]", 'password = "secret"']) + "\n")
    unprivileged = (["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
                    if os.geteuid() == 0 else [])

    result = subprocess.run(
        [*unprivileged, str(TWISTD), "-n", "--pidfile", "", "--logfile", "-", "pbx",
         "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        check=False)

    assert result.returncode == 1
    assert f"{config}: sip.tls_key: file not readable: {key}" in result.stderr
