"""Start-up check of the TLS files Envoy is given (``GatewaySpec.tls_cert_file``, ``tls_key_file``,
``client_ca_file``): a clear message naming the field before Envoy starts, instead of a line in its log."""

from __future__ import annotations

from pathlib import Path

from ..spec import GatewaySpec


def _read_pem(field: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"gateway: {field} {path!r} cannot be read: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"gateway: {field} {path!r} is not PEM (no '-----BEGIN' line)")
    return data


def check_tls(spec: GatewaySpec) -> bool:
    """True when ``spec`` serves TLS (``tls_cert_file`` + ``tls_key_file``, plus ``client_ca_file`` for mutual
    TLS), False for plaintext (none set). Raises ValueError naming the field when only one is set, a client CA
    comes without them, or a file is unreadable or not PEM."""
    cert_file, key_file = spec.tls_cert_file, spec.tls_key_file
    if spec.client_ca_file and not (cert_file and key_file):
        raise ValueError("gateway: client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file set too")
    if not cert_file and not key_file:
        return False
    if not cert_file or not key_file:
        have, missing = ("tls_cert_file", "tls_key_file") if cert_file else ("tls_key_file", "tls_cert_file")
        raise ValueError(
            f"gateway: {have} is set but {missing} is not; set both tls_cert_file and tls_key_file "
            "to serve TLS, or neither for plaintext"
        )
    _read_pem("tls_cert_file", cert_file)
    _read_pem("tls_key_file", key_file)
    if spec.client_ca_file:
        _read_pem("client_ca_file", spec.client_ca_file)
    return True
