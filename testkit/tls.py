"""A throwaway certificate authority and server certificate for TLS registries in tests.

``make_test_pki(directory)`` writes PEM files and returns their paths:

- ``ca.crt`` / ``ca.key``: a self-signed root CA (basicConstraints CA:true, keyCertSign).
- ``certs.d/ca.crt``: the CA alone, for ``skopeo --cert-dir``.
- ``server.crt`` / ``server.key``: a leaf for ``127.0.0.1``, ``::1`` and ``localhost``
  (serverAuth), signed by the CA. ``server.crt`` holds only the leaf; ``server-chain.crt``
  holds leaf + CA.

The same CA is used by the token issuer to sign JWT signing certificates (see
``testkit/token_issuer.py``); keys are ECDSA P-256 so generation is instant.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestPKI", "issue_cert", "key_pem", "make_test_pki"]


@dataclass(frozen=True)
class TestPKI:
    """Paths of the PEM files written by :func:`make_test_pki`, plus the in-memory CA."""

    __test__ = False  # not a pytest test class

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_chain: Path
    ca: x509.Certificate
    ca_private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_dir(self) -> Path:
        """A directory usable as skopeo's ``--cert-dir``: holds only ``ca.crt``.

        (containers/image treats every ``*.key`` there as a client key needing a ``*.cert``, so
        the server key must not live in it.)
        """
        return self.directory / "certs.d"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of a private key, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(
    common_name: str = "imagecopy test CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate valid for a day around now."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    dns_names: list[str] | None = None,
    ip_addresses: list[str] | None = None,
    server: bool = True,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by ``ca``. ``server=False`` gives a plain signing cert (JWT)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names or []]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if server:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_test_pki(directory: str | Path) -> TestPKI:
    """Write a CA and a server cert for 127.0.0.1/::1/localhost into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca()
    leaf, leaf_key = issue_cert(
        ca,
        ca_key,
        "localhost",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    paths = {
        "ca.crt": _cert_pem(ca),
        "ca.key": key_pem(ca_key),
        "server.crt": _cert_pem(leaf),
        "server.key": key_pem(leaf_key),
        "server-chain.crt": _cert_pem(leaf) + _cert_pem(ca),
    }
    for name, data in paths.items():
        (d / name).write_bytes(data)
        if name.endswith(".key"):
            (d / name).chmod(0o600)
    (d / "certs.d").mkdir(exist_ok=True)
    (d / "certs.d" / "ca.crt").write_bytes(paths["ca.crt"])
    return TestPKI(
        directory=d,
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        server_chain=d / "server-chain.crt",
        ca=ca,
        ca_private_key=ca_key,
    )
