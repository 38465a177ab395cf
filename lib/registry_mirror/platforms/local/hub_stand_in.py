"""STAND-IN for Docker Hub on the local platform: a token service (auth.docker.io) and a real
registry (distribution 3.1.2) that accepts only its tokens, anonymous pulls included, as Docker Hub
does, both behind one nginx front on the stand-in's address and port.

Why one front: registry 3.1 sends its upstream credentials only to a Bearer realm on the remote's own
host and port, or on the same registrable domain, never to an IP literal (`realmAllowed` in
distribution's registry/proxy/proxyauth.go). Docker Hub passes by domain (registry-1.docker.io and
auth.docker.io); a loopback stand-in can pass only by host and port, so the realm is `/token` on the
registry's own listener, and a realm anywhere else is refused as Docker Hub's rule refuses it."""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import requests
import yaml

from ...processes import PermanentError, ProcessRecord, free_port, start_process, wait_until
from ...registry_auth import RegistryAuth
from ...registry_build import built_registry
from .daemons import any_died, daemon_env, died, write_private
from .nginx import reload_nginx, start_nginx
from .hub_token_service import TokenServiceConfig, write_signing_material

# What the stand-in's registry runs: the release whose tag paging matches Docker Hub's (see
# hub_registry_binary); bootstrap builds it, as production pins it.
HUB_REGISTRY_VERSION = "3.1.2"


def start_hub_stand_in(*, data_dir: Path, config_dir: Path, logs: Path, address: str, port: int,
                       token_port: int, username: str, password: str,
                       register: Callable[[ProcessRecord], None] | None = None,
                       timeout: float = 30) -> tuple[ProcessRecord, ProcessRecord, ProcessRecord]:
    """Start the token service, the registry (on a loopback port of its own) and the front on
    `address:port` that routes `/token` to the first and everything else to the second; return the three
    (token service, registry, front) once the mirror's account gets a token through the front and
    `/v2/` accepts it.

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
    # The registry listens on a loopback port of its own, picked now (the three start and stop
    # together): nginx's workers run as an unprivileged user that could not reach a socket in our
    # private folders.
    url, backend = f"http://{address}:{port}", f"{address}:{free_port(address)}"
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "fields": {"service": "dockerhub-stand-in"},
                "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(data_dir)}, "delete": {"enabled": True}},
        "http": {"addr": backend},
        "auth": {"token": {"realm": f"{url}/token", "service": "registry.docker.io",
                           "issuer": "dockerhub-stand-in", "rootcertbundle": str(cert)}},
    }
    conf = config_dir / "hub.yml"
    conf.write_text(yaml.safe_dump(config, sort_keys=False))
    record = start_process("hub", [hub_registry_binary(), "serve", str(conf)], log=logs / "hub.log",
                           env=daemon_env())
    if register is not None:
        register(record)
    wait_until(lambda: _listens(backend), timeout=timeout, what="Docker Hub stand-in's registry", abort=died(record))
    prefix = config_dir / "hub-front"
    prefix.mkdir(exist_ok=True)
    front_conf = prefix / "nginx.conf"
    front_conf.write_text(hub_front_config(prefix=prefix, logs=logs, address=address, port=port,
                                           token_port=token_port, registry=backend))
    front = start_nginx("hub-front", conf=front_conf, prefix=prefix, log=logs / "hub-front.stderr.log",
                        ready=(address, port), register=register, timeout=timeout)
    wait_until(lambda: upstream_authenticates(url, username, password), timeout=timeout,
               what="Docker Hub stand-in", abort=any_died([token_rec, record, front]))
    return token_rec, record, front


def hub_registry_binary() -> str:
    """The registry behind the stand-in. Docker Hub pages a tag list by `n` and `last` as distribution
    3.x does; Debian's docker-registry (2.8.2) ignores both and lists every tag, which a mirror asking
    for a page after `last` would pass on as if Docker Hub did."""
    build = built_registry(HUB_REGISTRY_VERSION)
    if build is None or not Path(build.binary).exists():
        raise PermanentError(f"the Docker Hub stand-in needs registry {HUB_REGISTRY_VERSION}, not built here: "
                             "run `make bootstrap`")
    return build.binary


def hub_front_config(*, prefix: Path, logs: Path, address: str, port: int, token_port: int, registry: str,
                     extra_locations: str = "") -> str:
    """The front's nginx.conf: `/token` to the token service, the rest to the registry, streamed both
    ways (pushes of any size, ranges and HEADs passed through). `extra_locations` lets a fault drill
    answer some paths itself (Docker Hub over its pull limit)."""
    user = "" if os.geteuid() else "user nobody nogroup;"
    return _FRONT.format(prefix=prefix, logs=logs, address=address, port=port, token_port=token_port,
                         registry=registry, user=user, extra=extra_locations)


def hub_registry_address(config_dir: Path) -> str:
    """Where the stand-in's registry listens behind the front (`host:port`), from its config."""
    return str(yaml.safe_load((config_dir / "hub.yml").read_text())["http"]["addr"])


@contextmanager
def blobs_at_rate(front: ProcessRecord, *, config_dir: Path, logs: Path, address: str, port: int, token_port: int,
                  bytes_per_second: int) -> Iterator[None]:
    """Docker Hub slow for blobs (each answer sent at `bytes_per_second`) while the block runs: the
    front is reloaded with a rate-limited blob location, and with its own config again afterwards.
    Tokens and manifests are not slowed, and the realm stays where the mirrors send credentials."""
    prefix = config_dir / "hub-front"
    conf = prefix / "nginx.conf"
    original = conf.read_text()
    registry = hub_registry_address(config_dir)
    conf.write_text(hub_front_config(prefix=prefix, logs=logs, address=address, port=port, token_port=token_port,
                                     registry=registry, extra_locations=_SLOW_BLOBS.format(
                                         registry=registry, rate=bytes_per_second)))
    try:
        reload_nginx(front, conf=conf, prefix=prefix)
        yield
    finally:
        conf.write_text(original)
        reload_nginx(front, conf=conf, prefix=prefix)


def _listens(where: str) -> bool:
    host, _, port = where.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


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


_SLOW_BLOBS = """\
location ~ ^/v2/.+/blobs/ {{
            # limit_rate holds nothing back on an unbuffered answer (the front's default); in memory
            # only, as the front's temp folder is not its workers' to write.
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            limit_rate {rate};
            proxy_pass http://{registry};
        }}"""

_FRONT = """\
# STAND-IN for Docker Hub's front: auth.docker.io's /token and the registry on one listener.
{user}
worker_processes 1;
error_log {logs}/hub-front.error.log;
pid {prefix}/nginx.pid;
daemon off;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 900s;
    proxy_send_timeout 900s;
    proxy_set_header Host $http_host;
    proxy_set_header Connection "";
    server {{
        listen {address}:{port};
        location = /token {{
            proxy_pass http://{address}:{token_port};
        }}
        {extra}
        location / {{
            proxy_pass http://{registry};
        }}
    }}
}}
"""
