"""Throwaway X.509 material for the TLS tests (gateway TLS, mutual TLS, the load test over TLS): a CA, a
server certificate it signed for ``localhost`` / ``127.0.0.1``, and client certificates. Importable from every
test folder (pytest's ``pythonpath`` holds ``tests/``)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM


@dataclass
class Certs:
    ca: Path
    cert: Path
    """The server certificate followed by the CA (a chain)."""
    key: Path


@dataclass
class ClientCert:
    cert: bytes
    key: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _signed(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, ca: bool
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )


def ca_and_key(cn: str = "duplex test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca = _signed(cn, _name(cn), key.public_key(), ca=True).add_extension(usage, critical=True)
    return ca.sign(key, hashes.SHA256()), key


def make_certs(d: Path) -> Certs:
    """A CA and a server certificate it signed, valid for ``localhost`` and ``127.0.0.1``, as PEM files in ``d``."""
    ca, ca_key = ca_and_key()
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        _signed("localhost", ca.subject, key.public_key(), ca=False)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certs(d / "ca.crt", d / "tls.crt", d / "tls.key")
    certs.ca.write_bytes(ca.public_bytes(PEM))
    certs.cert.write_bytes(cert.public_bytes(PEM) + ca.public_bytes(PEM))
    certs.key.write_bytes(_key_pem(key))
    return certs


def client_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> ClientCert:
    """A client certificate (clientAuth) signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _signed("duplex client", ca.subject, key.public_key(), ca=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ClientCert(cert.public_bytes(PEM), _key_pem(key))
