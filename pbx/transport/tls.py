"""TLS contexts: the server certificate, and a self-signed one when none is configured.

A laptop install should come up with TLS and WSS listening, so when the
config names no certificate a self-signed one is made in the data directory
on first start (and reused after), and the log says so: phones must then be
told to accept it. Outbound TLS verifies the peer's name with
service-identity through `optionsForClientTLS`.

The certificate and key are read and checked here before OpenSSL loads
them (`check_pair`), because OpenSSL's own errors name neither the file
nor the mistake (``[('DECODER routines', '', 'unsupported')]`` for a key
file holding a certificate): `TlsFileError` says which file and what is
wrong with it, for the start-up message.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path, bool]:
    """(cert, key, created): paths of a self-signed pair in `directory`, made if missing."""
    cert_path = directory / "tls" / "pbx-selfsigned.crt"
    key_path = directory / "tls" / "pbx-selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path, False
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(hostname), x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, True


class TlsFileError(Exception):
    """A certificate or key file the PBX cannot use; ``key`` is the config key naming it."""

    def __init__(self, key: str, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.key = key
        self.path = path


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise TlsFileError(key, path, f"unreadable: {reason}") from None


def check_pair(cert_path: Path, key_path: Path) -> None:
    """Raise `TlsFileError` unless the files hold PEM certificates and the matching key."""
    cert_pem = _read("tls_cert", cert_path)
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        problem = "not a PEM certificate"
        if b"PRIVATE KEY-----" in cert_pem:
            problem += " (it holds a private key: are tls_cert and tls_key swapped?)"
        raise TlsFileError("tls_cert", cert_path, problem) from None
    key_pem = _read("tls_key", key_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError("tls_key", key_path,
                           "the private key is encrypted with a passphrase, which the PBX "
                           "cannot ask for: store it unencrypted, readable only by the PBX"
                           ) from None
    except UnsupportedAlgorithm as error:
        raise TlsFileError("tls_key", key_path,
                           f"a private key of a type not supported: {error}") from None
    except ValueError:
        problem = "not a PEM private key"
        if b"-----BEGIN CERTIFICATE-----" in key_pem:
            problem += " (it holds a certificate)"
        raise TlsFileError("tls_key", key_path, problem) from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificates[0].public_key().public_bytes(*spki):
        raise TlsFileError("tls_key", key_path,
                           f"does not match the certificate {cert_path} (the first in it)")


@implementer(IOpenSSLContextFactory)
class ServerContextFactory:
    """A server TLS context read straight from PEM files by OpenSSL.

    Loading through pyOpenSSL's X509/PKey objects is deprecated; OpenSSL's
    own file loaders also send a chain placed in the certificate file.
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate_chain_file(str(cert_path))
        context.use_privatekey_file(str(key_path))
        context.check_privatekey()
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def server_context(cert_path: Path, key_path: Path) -> ServerContextFactory:
    """Server TLS from PEM files; raises `TlsFileError` for a bad pair.

    OpenSSL.SSL.Error is left for what the checks above cannot foresee.
    """
    check_pair(cert_path, key_path)
    return ServerContextFactory(cert_path, key_path)


def client_context(hostname: str) -> IOpenSSLClientConnectionCreator:
    """Outbound TLS that checks the peer's certificate names `hostname`."""
    return ssl.optionsForClientTLS(hostname)


class SipTlsProtocol(TLSMemoryBIOProtocol):
    """TLS that tells the SIP protocol inside when encrypted bytes brought it nothing.

    OpenSSL decrypts a record only once all of it is in, so a sender that
    trickles one record byte by byte never gives the SIP protocol a first
    byte to start its message deadline from, and held the connection until
    the idle timeout (600 s). The protocol inside counts the plaintext it
    got (``plaintext_bytes``); when bytes came in and none came out, it is
    told (``encrypted_bytes_only``) and counts the message from then.
    """

    def dataReceived(self, data: bytes) -> None:
        inner = self.wrappedProtocol
        before = getattr(inner, "plaintext_bytes", None)
        super().dataReceived(data)
        if (before is not None and self.wrappedProtocol is inner
                and getattr(inner, "plaintext_bytes", before) == before):
            notify = getattr(inner, "encrypted_bytes_only", None)
            if callable(notify):
                notify()


class SipTlsFactory(TLSMemoryBIOFactory):
    """Twisted's TLS wrapper with `SipTlsProtocol` (TLS and WSS listeners)."""

    protocol = SipTlsProtocol
