"""SeaweedFS's own security for the local platform: only its S3 API (with keys) may hand out data.

Its master, volume server and filer listen on loopback ports that any process on the machine can
reach. Without this, a client the proxy refuses could read cached layers straight from the filer.
So each part reads a `security.toml` (SeaweedFS looks for it in its working directory) that:
- signs and checks JWTs for every volume and filer read and write over HTTP;
- requires mutual TLS, with certificates from a CA made for this stack, on every gRPC port.
The S3 gateway, the filer and the volume server hold the keys and certificates; nothing else does.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PARTS = ("master", "volume", "filer", "s3", "client")


def ensure_security_config(directory: Path, address: str) -> Path:
    """Write the CA, one certificate per part and security.toml once; return the folder to run in."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    toml = directory / "security.toml"
    if toml.exists() and all((directory / f"{p}.crt").exists() for p in PARTS):
        return directory
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry-mirror local SeaweedFS CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(directory / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    for part in PARTS:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, part)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)),
                                                            x509.DNSName("localhost")]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(directory / f"{part}.crt", cert.public_bytes(serialization.Encoding.PEM))
        _write(directory / f"{part}.key", key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    lines = []
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        lines += [f"[{section}]", f'key = "{secrets.token_urlsafe(32)}"', "expires_after_seconds = 10", ""]
    lines += ["[grpc]", f'ca = "{directory / "ca.crt"}"', ""]
    for part in PARTS:
        lines += [f"[grpc.{part}]", f'cert = "{directory / f"{part}.crt"}"', f'key = "{directory / f"{part}.key"}"', ""]
    _write(toml, "\n".join(lines).encode())
    return directory


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
