"""STAND-IN for Docker Hub on the local platform: a token service (auth.docker.io) and a real
docker-registry that accepts only its tokens, anonymous pulls included, as Docker Hub does."""
from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt
import requests
import yaml

from ...processes import PermanentError, ProcessRecord, start_process, wait_until
from ...registry_auth import RegistryAuth
from .daemons import any_died, daemon_env, died, require, write_private
from .hub_token_service import TokenServiceConfig, write_signing_material


def start_hub_stand_in(*, data_dir: Path, config_dir: Path, logs: Path, address: str, port: int,
                       token_port: int, username: str, password: str,
                       register: Callable[[ProcessRecord], None] | None = None,
                       timeout: float = 30) -> tuple[ProcessRecord, ProcessRecord]:
    """Start the token service, then the registry behind it; return both once the mirror's account
    gets a token and `/v2/` accepts it.

    The mirror's account (`username`) may pull and nothing else, like a read-only access token; the
    sample images are pushed by a separate seeding account (`hub_seeder`).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    accounts = config_dir / "hub.htpasswd"
    seeder, seeder_password = hub_seeder(config_dir)
    # The token service checks passwords against bcrypt hashes, in htpasswd's format.
    write_private(accounts, "".join(f"{user}:{bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=10)).decode()}\n"
                                    for user, secret in ((username, password), (seeder, seeder_password))))
    key, cert = config_dir / "hub-token.key", config_dir / "hub-token.pem"
    if not (key.exists() and cert.exists()):
        write_signing_material(key, cert)
    token = TokenServiceConfig(address=address, port=token_port, key_file=str(key), cert_file=str(cert),
                               htpasswd_file=str(accounts), log_file=str(logs / "hub-token.log"),
                               push_users=(seeder,))
    token_conf = config_dir / "hub-token.json"
    token_conf.write_text(json.dumps(token.__dict__, default=list))
    token_rec = start_process("hub-token", [sys.executable, "-m", "registry_mirror.platforms.local.hub_token_service",
                                            str(token_conf)], log=logs / "hub-token.stderr.log", env=daemon_env())
    if register is not None:
        register(token_rec)
    wait_until(lambda: requests.get(token.realm, timeout=2).status_code == 200, timeout=timeout,
               what="Docker Hub token stand-in", abort=died(token_rec))
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "fields": {"service": "dockerhub-stand-in"},
                "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(data_dir)}, "delete": {"enabled": True}},
        "http": {"addr": f"{address}:{port}"},
        "auth": {"token": {"realm": token.realm, "service": "registry.docker.io",
                           "issuer": "dockerhub-stand-in", "rootcertbundle": str(cert)}},
    }
    conf = config_dir / "hub.yml"
    conf.write_text(yaml.safe_dump(config, sort_keys=False))
    record = start_process("hub", [require("docker-registry"), "serve", str(conf)], log=logs / "hub.log",
                           env=daemon_env())
    if register is not None:
        register(record)
    wait_until(lambda: upstream_authenticates(f"http://{address}:{port}", username, password), timeout=timeout,
               what="Docker Hub stand-in", abort=any_died([token_rec, record]))
    return token_rec, record


def hub_seeder(config_dir: Path) -> tuple[str, str]:
    """The Docker Hub stand-in's seeding account, which alone may push; its password is made once."""
    path = config_dir / "hub-seeder.json"
    if not path.exists():
        write_private(path, json.dumps({"username": "hub-seeder", "password": secrets.token_urlsafe(24)}))
    data = json.loads(path.read_text())
    return data["username"], data["password"]


def upstream_authenticates(url: str, username: str, password: str, *, timeout: float = 5) -> bool:
    """What a mirror does first: GET /v2/, answer the Bearer challenge with a token fetched with the
    configured credentials, and get 200."""
    try:
        return requests.get(f"{url}/v2/", auth=RegistryAuth(username or None, password),
                            timeout=timeout).status_code == 200
    except requests.HTTPError as exc:  # the token service refused the credentials: waiting will not help
        raise PermanentError(f"token service refused the upstream credentials: {exc}") from None
