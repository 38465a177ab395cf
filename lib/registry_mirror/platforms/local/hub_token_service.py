"""STAND-IN for Docker Hub's token service (auth.docker.io), for the local platform only.

Docker Hub answers `/v2/` with a Bearer challenge; clients fetch a JWT from the realm, anonymously
or with basic credentials, and retry. The registry's proxy only sends its configured credentials to
a Bearer realm (it never answers a Basic challenge), so a faithful stand-in must speak this flow.
The docker-registry in front of the stand-in's storage verifies our tokens against `cert.pem`.

Run as a daemon: `python -m registry_mirror.platforms.local.hub_token_service CONFIG.json`. It logs one JSON line per
token request (user or anonymous, scope, outcome), which the savings analysis reads.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import sys
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bcrypt
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVICE = "registry.docker.io"
ISSUER = "dockerhub-stand-in"
TOKEN_SECONDS = 300


@dataclass(frozen=True)
class TokenServiceConfig:
    address: str
    port: int
    key_file: str
    cert_file: str
    htpasswd_file: str
    log_file: str
    push_users: tuple[str, ...] = ()  # who may push (the seeding account); everyone else pulls only

    @property
    def realm(self) -> str:
        return f"http://{self.address}:{self.port}/token"


def write_signing_material(key_file: Path, cert_file: Path) -> None:
    """A fresh RSA key and a self-signed certificate the registry trusts (`rootcertbundle`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def serve(config: TokenServiceConfig) -> None:
    key = Path(config.key_file).read_bytes()
    cert = x509.load_pem_x509_certificate(Path(config.cert_file).read_bytes())
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    users = _read_htpasswd(Path(config.htpasswd_file))
    log = open(config.log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the server

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            if url.path != "/token":
                self._answer(HTTPStatus.NOT_FOUND, {"details": "not found"})
                return
            query = parse_qs(url.query)
            user = self._user()
            if user is False:
                self._log(None, query, 401)
                self.send_response(HTTPStatus.UNAUTHORIZED)
                self.send_header("WWW-Authenticate", f'Basic realm="{ISSUER}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            access = [_grant(scope, user in config.push_users) for scope in query.get("scope", [])]
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": user or "", "aud": query.get("service", [SERVICE])[0],
                      "iat": now, "nbf": now - 5, "exp": now + TOKEN_SECONDS, "jti": secrets.token_hex(8),
                      "access": [a for a in access if a]}
            token = jwt.encode(claims, key, algorithm="RS256", headers={"x5c": [x5c]})
            self._log(user, query, 200)
            self._answer(HTTPStatus.OK, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
                                         "issued_at": dt.datetime.now(dt.timezone.utc).isoformat()})

        def _user(self) -> str | None | bool:
            """None: anonymous; a name: good credentials; False: wrong credentials."""
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            hashed = users.get(name)
            if hashed is None or not bcrypt.checkpw(password.encode(), hashed):
                return False
            return name

        def _answer(self, status: HTTPStatus, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _log(self, user: str | None, query: dict[str, list[str]], status: int) -> None:
            log.write(json.dumps({"time": dt.datetime.now(dt.timezone.utc).isoformat(), "status": status,
                                  "user": user, "anonymous": user is None, "scope": query.get("scope", []),
                                  "client": self.client_address[0]}) + "\n")

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - our own log instead
            return

    server = ThreadingHTTPServer((config.address, config.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def _grant(scope: str, may_push: bool) -> dict[str, object] | None:
    parts = scope.split(":")
    if len(parts) != 3 or parts[0] != "repository":
        return None
    wanted = set(parts[2].split(","))
    allowed = {"pull"} | ({"push", "delete"} if may_push else set())
    return {"type": "repository", "name": parts[1], "actions": sorted(wanted & allowed)}


def _read_htpasswd(path: Path) -> dict[str, bytes]:
    users = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            name, hashed = line.split(":", 1)
            users[name] = hashed.encode()
    return users


if __name__ == "__main__":
    serve(TokenServiceConfig(**json.loads(Path(sys.argv[1]).read_text())))
