"""Faults to rehearse incidents with, injected for real into the local platform, and undone.

Each fault breaks one layer the way it breaks in production: processes are killed or restarted with
a wrong setting, configs are edited behind the deploy's back, a stand-in answers like Docker Hub over
its limit. Every process a fault starts is recorded in the stack's state (so `make down` and the
tests' clean-up stop it) and in `<state_dir>/faults.json` (so `undo` can run from another kernel).
Undo puts the stack back the way the deploy runbook would: by deploying it again.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ...credentials import LocalStackSecrets
from ...errors import ParameterError
from ...processes import ProcessRecord, gone, start_process, stop_process, wait_until
from ...s3_clients import s3_client
from .daemons import daemon_env
from .mirrors import mirror_registry_binary, mirror_secret_env, upstream_answers
from .nginx import nginx_argv, reload_nginx
from .hub_stand_in import hub_front_config, hub_registry_address
from .state import HUB_PARTS, StackState
from .worker_access import MIRROR_UMASK

if TYPE_CHECKING:
    from .platform import LocalPlatform

SLOW_SECONDS = 3.0  # what the slow-mirror fault adds to every request


@dataclass(frozen=True)
class Fault:
    name: str
    layer: str  # where triage should find it
    what: str  # what is done to the stack, in a sentence


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("upstream-down", "upstream", "Docker Hub (the stand-in and its token service) stops answering"),
    Fault("upstream-rate-limited", "upstream",
          "Docker Hub answers manifest GETs with 429 TOOMANYREQUESTS and ratelimit-remaining: 0"),
    Fault("s3-down", "s3", "the S3 API (SeaweedFS's S3 gateway) stops"),
    Fault("s3-wrong-credentials", "mirror",
          "every mirror instance is restarted with an S3 secret key the store does not accept"),
    Fault("bucket-deleted", "s3", "the cache's bucket is emptied and deleted"),
    Fault("mirror-dead", "mirror", "one mirror instance is killed (SIGKILL)"),
    Fault("mirrors-fail-at-start", "mirror",
          "Docker Hub goes down and every mirror instance is restarted, so each fails its start-up check"),
    Fault("mirror-slow", "mirror", f"one mirror instance takes {SLOW_SECONDS:g} s longer to answer each request"),
    Fault("proxy-denies-everyone", "proxy", "the running proxy config is edited to deny every client"),
    Fault("proxy-cannot-reach-mirror", "proxy",
          "the running proxy config is edited to send requests where no mirror listens (a missing network policy)"),
)}


class LocalFaults:
    """The fault library of one local stack (what drill.ipynb injects and undoes)."""

    names = tuple(FAULTS)

    def __init__(self, stack: LocalPlatform) -> None:
        self.stack = stack

    def catalogue(self) -> pd.DataFrame:
        return catalogue()

    def inject(self, fault: str, *, dry_run: bool) -> str:
        if fault not in FAULTS:
            raise ParameterError(f"parameter 'fault' must be one of {', '.join(FAULTS)}, got {fault!r}")
        return inject(self.stack, fault, dry_run=dry_run)

    def active(self) -> list[str]:
        return active_faults(self.stack)

    def undo(self, *, dry_run: bool) -> str:
        return undo(self.stack, dry_run=dry_run)


def catalogue() -> pd.DataFrame:
    """The faults a drill can inject: name, the layer triage should find, what is done."""
    return pd.DataFrame([f.__dict__ for f in FAULTS.values()], columns=["name", "layer", "what"])


def inject(stack: LocalPlatform, name: str, *, dry_run: bool = False) -> str:
    """Break the stack as fault `name` says; returns what was (or, in a dry run, would be) done.
    One fault at a time."""
    fault = _known(name)
    active = _load(stack)
    if active:
        raise ValueError(f"fault {', '.join(active)} is already injected: undo it first")
    state = StackState.load(stack.paths.state_file)
    if not state.mirrors or not state.running("proxy"):
        raise ValueError("the local stack is not running: deploy it first (make demo)")
    if dry_run:
        return f"DRY RUN: {fault.name} would be injected: {fault.what}"
    record: dict[str, object] = {}
    detail = _INJECT[name](stack, state, record)
    _save(stack, {name: record})
    return f"{fault.name}: {detail}"


def undo(stack: LocalPlatform, name: str | None = None, *, dry_run: bool = False) -> str:
    """Take the injected fault (or `name`) away and deploy the stack back to what its parameters say."""
    active = _load(stack)
    names = [name] if name else list(active)
    if dry_run:
        return (f"DRY RUN: would undo {', '.join(names)} and deploy the stack again" if names
                else "DRY RUN: no fault is injected; undo would only deploy the stack again")
    for each in names:
        _known(each)
        state = StackState.load(stack.paths.state_file)
        for proc in [n for n in state.processes if n.startswith("fault-")]:
            stop_process(state.processes.pop(proc))
        state.save(stack.paths.state_file)
        _UNDO.get(each, lambda *_: None)(stack, active.get(each, {}))
    _save(stack, {})
    stack.deploy()
    return f"undone: {', '.join(names) or 'nothing was injected'}; the stack is deployed again"


def active_faults(stack: LocalPlatform) -> list[str]:
    return list(_load(stack))


# ------------------------------------------------------------------------------ the faults

def _upstream_down(stack: LocalPlatform, state: StackState, record: dict) -> str:
    _stop(stack, state, *HUB_PARTS)
    return f"stopped the Docker Hub stand-in; {stack.hub_url} refuses connections"


def _upstream_rate_limited(stack: LocalPlatform, state: StackState, record: dict) -> str:
    """The stand-in's front is replaced by one that answers manifest GETs with Docker Hub's 429 and
    headers (a GET counts against Docker Hub's limit, a HEAD does not, so HEADs still pass); tokens
    and everything else still reach the token service and the registry behind it."""
    assert stack.settings.local is not None
    local = stack.settings.local
    _stop(stack, state, "hub-front")
    prefix = stack.paths.nginx_prefix("fault-hub-limit")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    registry = hub_registry_address(stack.paths.secrets)
    limit = _LIMITER.format(address=local.address, registry=registry)
    conf.write_text(hub_front_config(prefix=prefix, logs=stack.paths.logs, address=local.address, port=local.hub_port,
                                     token_port=local.hub_token_port, registry=registry, extra_locations=limit))
    limiter = start_process("fault-hub-limit", nginx_argv(conf, prefix), log=stack.paths.logs / "fault-hub-limit.log",
                            env=daemon_env())
    _register(stack, limiter)
    wait_until(lambda: upstream_answers(stack.hub_url, timeout=2), timeout=30, what="the rate-limited Docker Hub")
    return f"{stack.hub_url} now answers manifest GETs with 429 (ratelimit-remaining: 0;w=21600)"


def _s3_down(stack: LocalPlatform, state: StackState, record: dict) -> str:
    # The relay goes too: it holds the S3 port for the gateway, which sits in SeaweedFS's private network.
    _stop(stack, state, "s3-relay", "s3-gateway")
    assert stack.settings.local is not None
    return f"stopped SeaweedFS's S3 gateway; port {stack.settings.local.s3_port} refuses connections"


def _s3_wrong_credentials(stack: LocalPlatform, state: StackState, record: dict) -> str:
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    env = mirror_secret_env(stack.settings, secrets)
    env["REGISTRY_STORAGE_S3_SECRETKEY"] = "not-the-key-the-store-knows-" + "0" * 12
    _restart_mirrors(stack, state, env)
    return f"restarted {len(state.mirrors)} mirror instance(s) with a wrong S3 secret key"


def _bucket_deleted(stack: LocalPlatform, state: StackState, record: dict) -> str:
    assert stack.settings.local is not None and stack.settings.storage is not None
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    s3 = s3_client(endpoint=stack.configs.s3_endpoint, access_key=secrets.s3_access_key.reveal(),
                   secret_key=secrets.s3_secret_key.reveal())
    bucket = stack.settings.storage.bucket
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    s3.delete_bucket(Bucket=bucket)
    return f"deleted {deleted} object(s) and the bucket {bucket}"


def _mirror_dead(stack: LocalPlatform, state: StackState, record: dict) -> str:
    victim = state.mirrors[0]
    os.kill(state.processes[victim].pid, 9)
    wait_until(lambda: gone(state.processes[victim]), timeout=10, what=f"{victim} to die")
    return f"killed {victim} (pid {state.processes[victim].pid})"


def _mirrors_fail_at_start(stack: LocalPlatform, state: StackState, record: dict) -> str:
    _stop(stack, state, *HUB_PARTS)
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    _restart_mirrors(stack, state, mirror_secret_env(stack.settings, secrets))
    return f"stopped the Docker Hub stand-in and restarted {len(state.mirrors)} mirror instance(s); each exited"


def _mirror_slow(stack: LocalPlatform, state: StackState, record: dict) -> str:
    victim = state.mirrors[0]
    sock = stack.paths.mirror_socket(victim)
    target = sock.with_name(sock.name + ".behind-slow-relay")
    os.rename(sock, target)  # the registry keeps listening on the renamed socket
    record.update(socket=str(sock), target=str(target), instance=victim)
    relay = start_process(f"fault-slow-{victim}", [sys.executable, "-m", "registry_mirror.platforms.local.slow_relay",
                                                   str(sock), str(target), str(SLOW_SECONDS)],
                          log=stack.paths.logs / "fault-slow-relay.log", env=daemon_env(), umask=MIRROR_UMASK)
    _register(stack, relay)
    wait_until(lambda: sock.exists(), timeout=10, what="the slow relay's socket")
    stat = target.stat()
    os.chown(sock, -1, stat.st_gid) if os.geteuid() == 0 else None
    os.chmod(sock, stat.st_mode & 0o777)
    return f"{victim} now answers every request {SLOW_SECONDS:g} s late"


def _proxy_denies_everyone(stack: LocalPlatform, state: StackState, record: dict) -> str:
    def deny(text: str) -> str:
        geo = re.search(r"geo \$mirror_client_allowed \{.*?\}", text, re.S)
        assert geo is not None, "no client policy in the proxy config"
        return text[:geo.start()] + re.sub(r" 1;", " 0;", geo.group(0)) + text[geo.end():]
    _edit_proxy(stack, state, deny)
    return "every allowed range in the running proxy config now says 0 (deny)"


def _proxy_cannot_reach_mirror(stack: LocalPlatform, state: StackState, record: dict) -> str:
    _edit_proxy(stack, state, lambda text: re.sub(r"(mirror-\d+-\d+)\.sock", r"\1-unreachable.sock", text))
    return "the running proxy config sends requests to sockets no mirror listens on"


def _undo_slow(stack: LocalPlatform, record: dict) -> None:
    sock, target = Path(str(record.get("socket", ""))), Path(str(record.get("target", "")))
    if not target.exists():
        return
    if StackState.load(stack.paths.state_file).running(str(record.get("instance"))):
        if sock.exists():
            sock.unlink()  # the relay's
        os.rename(target, sock)  # the instance listens where the proxy looks again
    else:
        target.unlink()  # the instance was replaced (a remedy): its renamed socket is left over


_INJECT: dict[str, Callable[[LocalPlatform, StackState, dict], str]] = {
    "upstream-down": _upstream_down, "upstream-rate-limited": _upstream_rate_limited, "s3-down": _s3_down,
    "s3-wrong-credentials": _s3_wrong_credentials, "bucket-deleted": _bucket_deleted, "mirror-dead": _mirror_dead,
    "mirrors-fail-at-start": _mirrors_fail_at_start, "mirror-slow": _mirror_slow,
    "proxy-denies-everyone": _proxy_denies_everyone, "proxy-cannot-reach-mirror": _proxy_cannot_reach_mirror,
}
_UNDO: dict[str, Callable[[LocalPlatform, dict], None]] = {"mirror-slow": _undo_slow}

# STAND-IN for Docker Hub over its pull limit (fault upstream-rate-limited): manifest GETs get 429.
_LIMITER = """\
location ~ ^/v2/.+/manifests/ {{
            add_header ratelimit-limit "100;w=21600" always;
            add_header ratelimit-remaining "0;w=21600" always;
            add_header docker-ratelimit-source "{address}" always;
            if ($request_method = GET) {{
                return 429 '{{"errors":[{{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}}]}}';
            }}
            proxy_pass http://{registry};
        }}"""


# ------------------------------------------------------------------------------ helpers

def _known(name: str) -> Fault:
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    return FAULTS[name]


def _faults_file(stack: LocalPlatform) -> Path:
    return stack.paths.root / "faults.json"


def _load(stack: LocalPlatform) -> dict[str, dict]:
    path = _faults_file(stack)
    return json.loads(path.read_text()) if path.exists() else {}


def _save(stack: LocalPlatform, active: dict[str, dict]) -> None:
    _faults_file(stack).write_text(json.dumps(active, indent=2))


def _stop(stack: LocalPlatform, state: StackState, *names: str) -> None:
    for name in names:
        rec = state.processes.get(name)
        if rec is not None:
            stop_process(rec)
    # The state keeps the records: the stack knows they should run, finds them dead, and starts them.


def _register(stack: LocalPlatform, record: ProcessRecord) -> None:
    state = StackState.load(stack.paths.state_file)
    state.processes[record.name] = record
    state.save(stack.paths.state_file)


def _restart_mirrors(stack: LocalPlatform, state: StackState, env: dict[str, str]) -> None:
    """Restart every instance in place with `env`, as a platform restart would; they are not waited for."""
    executable = mirror_registry_binary(stack.settings.registry.version)
    assert executable is not None
    started = []
    for name in state.mirrors:
        stop_process(state.processes[name])
        sock = stack.paths.mirror_socket(name)
        if sock.exists():
            sock.unlink()
        rec = start_process(name, [executable, "serve", str(stack.paths.config / f"{name}.yml")],
                            log=stack.paths.logs / f"{name}.log", env=daemon_env(env), umask=MIRROR_UMASK)
        _register(stack, rec)
        started.append(rec)
    # Each checks its storage and its upstream first and panics when either fails.
    wait_until(lambda: all(gone(r) for r in started), timeout=30, what="the restarted mirror instances to exit")


def _edit_proxy(stack: LocalPlatform, state: StackState, edit: Callable[[str], str]) -> None:
    conf = stack.paths.config / "proxy.conf"
    conf.write_text(edit(conf.read_text()))
    reload_nginx(state.processes["proxy"], conf=conf, prefix=stack.paths.nginx_prefix("proxy"))
