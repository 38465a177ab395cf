"""The mirror instances: registries in proxy mode, each on a unix socket, started until they answer."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from ...credentials import LocalStackSecrets, upstream_password
from ...errors import ComponentNotReady
from ...parameters import Settings
from ...processes import ProcessRecord, start_process, stop_process, wait_until
from ...registry_build import built_registry, uses_debian_package
from ...registry_config import REGISTRY_PROCESS_ENV
from ...unix_http import unix_request
from .daemons import binary, daemon_env, died
from .worker_access import MIRROR_UMASK


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
        record = start_process(name, [executable, "serve", str(config_file)], log=log, env=daemon_env({**REGISTRY_PROCESS_ENV, **secrets}),
                               umask=MIRROR_UMASK)
        if register is not None:
            register(record)
        try:
            wait_until(lambda: mirror_healthy(socket_path), timeout=max(1.0, deadline - time.monotonic()),
                       what=f"{name} health check", abort=died(record))
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


def mirror_healthy(socket_path: Path) -> bool:
    """Does the instance on this socket answer GET /v2/ with 200?"""
    try:
        return unix_request(str(socket_path), "GET", "/v2/", timeout=2).status == 200
    except OSError:
        return False


def mirror_secret_env(settings: Settings, secrets: LocalStackSecrets) -> dict[str, str]:
    """What a mirror instance gets as environment, not config: S3 keys, http secret, upstream password."""
    env = {"REGISTRY_STORAGE_S3_ACCESSKEY": secrets.s3_access_key.reveal(),
           "REGISTRY_STORAGE_S3_SECRETKEY": secrets.s3_secret_key.reveal(),
           "REGISTRY_HTTP_SECRET": secrets.http_secret.reveal()}
    password = upstream_password(settings)
    if password is not None:
        env["REGISTRY_PROXY_PASSWORD"] = password.reveal()
    return env


def mirror_registry_binary(version: str) -> str | None:
    """The registry executable for `version`: Debian's package for 2.8.2, bootstrap's build for 3.x."""
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


def upstream_answers(url: str, *, timeout: float = 5) -> bool:
    """Does a registry answer at `url`? 200 (anonymous) or 401 (asks for credentials) both count.

    A mirror instance needs this before it starts: the registry panics at start when GET
    <remoteurl>/v2/ fails (distribution #4038).
    """
    try:
        resp = requests.get(f"{url}/v2/", timeout=timeout)
    except requests.RequestException:
        return False
    return resp.status_code in (200, 401)


def _exit_reason(log: Path, offset: int) -> str:
    """The registry's own words for why it exited: its panic line, else its last line."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").strip().splitlines()
    panic = next((line for line in lines if line.startswith("panic:")), None)
    return (panic or (lines[-1] if lines else "no output"))[:300]
