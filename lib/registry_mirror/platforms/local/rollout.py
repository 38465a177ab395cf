"""A deploy of the local stack, step by step: S3, the upstream, the mirror instances (replaced one at
a time), the security proxy, the router stand-in, the public endpoint. Each step is recorded (only
planned in a dry run); each process is recorded in the stack's state the moment it runs, so a
deploy that fails half-way leaves nothing `down` would not find.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from ...credentials import LocalStackSecrets, upstream_password
from ...deploy_report import StepRecorder, Unchanged
from ...errors import ComponentNotReady, DeployError
from ...preflight import Check, PreflightReport
from ...processes import ProcessRecord, port_is_free, reap_session, session_members, stop_process, wait_until
from ...registry_config import DRAIN_SECONDS, registry_config_yaml
from ...sample_images import SAMPLE_IMAGES, seed_registry
from . import private_network
from .configs import Nginx, StackConfigs
from .daemons import binary
from .fanout import FANOUT, FANOUT_STOP_SECONDS, fanout_fingerprint, start_fanout
from .hub_stand_in import hub_seeder, start_hub_stand_in
from .mirrors import (
    mirror_healthy, mirror_registry_binary, mirror_secret_env, registry_version, start_mirror_instance,
    upstream_answers,
)
from .nginx import nginx_answers, reload_nginx, start_nginx
from .seaweedfs import (
    SEAWEEDFS_LAYOUT, SEAWEEDFS_PARTS, ensure_bucket, s3_round_trip, start_seaweedfs, stop_seaweedfs_part,
    storage_parts_alive,
)
from .state import HUB_PARTS, StackState, is_mirror, stop_rank

# Seconds a mirror may take to exit after its drain window before it is killed.
MIRROR_EXIT_GRACE_SECONDS = 3


def mirror_stop_seconds() -> float:
    """From SIGTERM to SIGKILL for a mirror instance."""
    return DRAIN_SECONDS + MIRROR_EXIT_GRACE_SECONDS


def preflight(configs: StackConfigs) -> PreflightReport:
    """Checks that change nothing: binaries, versions, free ports, secrets, upstream, folders."""
    settings, local, paths = configs.settings, configs.local, configs.paths
    state = StackState.load(paths.state_file)
    checks: list[Check] = []
    want = settings.registry.version
    for name in ("docker-registry", "nginx", "weed", "skopeo"):
        path = binary(name)
        checks.append(Check(f"{name} installed", path is not None, path or "not found; run `make bootstrap`"))
    mirror_binary = mirror_registry_binary(want)
    checks.append(Check(f"registry {want} for the mirrors", mirror_binary is not None,
                        mirror_binary or "not built; run `make bootstrap` (it builds the version in params)"))
    version = registry_version(want)
    checks.append(Check("registry version", version == want,
                        f"{mirror_binary} reports {version}; params registry.version {want}"))
    # Keyed by the process that holds the port when the stack runs.
    ports = {"router": local.public_port, "s3-relay": local.s3_port}
    if uses_hub_stand_in(configs):
        ports["hub-front"] = local.hub_port
        ports["hub-token"] = local.hub_token_port
    for component, port in ports.items():
        # A killed nginx master's workers still hold its port: ours too, and the deploy stops them.
        ours = state.running(component) or (component in state.processes
                                            and bool(session_members(state.processes[component])))
        # A SeaweedFS started before the relay existed has its gateway on the S3 port; the deploy replaces it.
        ours = ours or (component == "s3-relay" and state.running("s3-gateway"))
        free = ours or port_is_free(local.address, port)
        checks.append(Check(f"port {port} ({component})", free,
                            "held by this stack" if ours else ("free" if free else "in use by another program")))
    try:
        upstream_password(settings)
        checks.append(Check("upstream credentials", True, "present" if settings.upstream.username else "anonymous"))
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        checks.append(Check("upstream credentials", False, str(exc)))
    if not uses_hub_stand_in(configs):
        # The registry panics at start when the upstream does not answer (distribution #4038).
        checks.append(Check("upstream reachable", upstream_answers(settings.upstream.url), settings.upstream.url))
    # Look at the nearest folder that exists: a preflight creates nothing.
    existing = next(p for p in (paths.root, *paths.root.parents) if p.exists())
    writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    checks.append(Check("state dir writable", writable, str(paths.root)))
    unavailable = private_network.available()
    checks.append(Check("private network for SeaweedFS", unavailable is None,
                        unavailable or "a network namespace of the stack's own can be created"))
    user = paths.access.user
    if user is None:
        checks.append(Check("nginx worker user", True, "the invoking user (not root)"))
    else:
        useradd = binary("useradd")
        checks.append(Check("nginx worker user", useradd is not None,
                            f"{user}, this stack's own (the deploy creates it, down removes it)" if useradd
                            else f"useradd is missing, so the workers' user {user} cannot be created"))
    return PreflightReport(checks)


def hub_url(configs: StackConfigs) -> str:
    return f"http://{configs.local.address}:{configs.local.hub_port}"


def uses_hub_stand_in(configs: StackConfigs) -> bool:
    return configs.settings.upstream.url == hub_url(configs)


def stop_recorded(record: ProcessRecord, *, storage_alive: bool = True, drain_deadline: float | None = None) -> None:
    """Stop one process of the stack the way its program needs (SeaweedFS's parts have their own;
    `storage_alive` says whether SeaweedFS's master and volume server ran when the stop began). A
    mirror already asked to stop (`request_stop`) passes the `drain_deadline` that began with it."""
    if record.name in SEAWEEDFS_PARTS:
        stop_seaweedfs_part(record, storage_alive=storage_alive)
    elif is_mirror(record.name):
        # A mirror that has not exited once its drain is over is stuck (on a storage call that does not
        # return); waiting longer would only hold up a deploy or a down that is already replacing it.
        if drain_deadline is None:
            drain_deadline = time.monotonic() + mirror_stop_seconds()
        stop_process(record, timeout=max(0.0, drain_deadline - time.monotonic()))
    elif record.name == FANOUT:
        stop_process(record, timeout=FANOUT_STOP_SECONDS)
    else:
        stop_process(record)


def set_service(configs: StackConfigs, state: StackState, mirrors: list[str]) -> str:
    """Point the proxy at exactly these instances and wait until no worker uses the old set."""
    state.mirrors = mirrors
    conf = configs.paths.config / "proxy.conf"
    conf.write_text(configs.nginx_conf("proxy", mirrors))
    reload_nginx(state.processes["proxy"], conf=conf, prefix=configs.paths.nginx_prefix("proxy"))
    state.save(configs.paths.state_file)
    return f"in service: {', '.join(mirrors)}"


class Rollout:
    """The steps of one deploy, over the stack's state (saved as it changes)."""

    def __init__(self, configs: StackConfigs, state: StackState, steps: StepRecorder,
                 secrets: LocalStackSecrets) -> None:
        self.configs, self.state, self.steps, self.secrets = configs, state, steps, secrets
        self.settings, self.local, self.paths = configs.settings, configs.local, configs.paths

    def run(self, *, replace_mirrors: bool) -> None:
        self.ensure_s3()
        self.ensure_upstream()
        self.ensure_mirrors(replace=replace_mirrors)
        self.ensure_fanout()
        self.ensure_nginx("proxy")
        self.ensure_nginx("router")
        self.steps.run("router", "ready: the public endpoint answers through proxy and mirrors", lambda: Unchanged(
            self._wait_ready("router", lambda: nginx_answers((self.local.address, self.local.public_port))
                             and "answers", log=self.paths.logs / "proxy.stderr.log")))
        if not self.steps.dry_run:
            self.paths.client_dir.mkdir(parents=True, exist_ok=True)
            for name, text in self.configs.client_configs().as_dict().items():
                (self.paths.client_dir / name).write_text(text)

    # ------------------------------------------------------------------ steps

    def ensure_s3(self) -> None:
        assert self.settings.storage is not None
        state, endpoint = self.state, self.configs.s3_endpoint
        keys = (self.secrets.s3_access_key.reveal(), self.secrets.s3_secret_key.reveal())
        if all(state.running(p) for p in SEAWEEDFS_PARTS) and state.fingerprints.get("s3") == SEAWEEDFS_LAYOUT:
            self.steps.unchanged("s3", "SeaweedFS",
                                 f"pids {', '.join(str(state.processes[p].pid) for p in SEAWEEDFS_PARTS)}")
        else:
            def start() -> str:
                # A part that survived alone would hold its port and its store's lock: restart them together.
                self._stop_all(("s3", *SEAWEEDFS_PARTS))
                recs = start_seaweedfs(data_dir=self.paths.data / "s3", config_dir=self.paths.secrets,
                                       run_dir=self.paths.run, logs=self.paths.logs, address=self.local.address,
                                       s3_port=self.local.s3_port, access_key=keys[0], secret_key=keys[1],
                                       register=self._register, timeout=self.local.ready_timeout_seconds)
                state.fingerprints["s3"] = SEAWEEDFS_LAYOUT
                return f"pids {', '.join(str(r.pid) for r in recs)}, S3 API {endpoint}"
            self.steps.run("s3", "start SeaweedFS (master, volume, filer, S3 gateway)", start, detail=endpoint)
        bucket = self.settings.storage.bucket
        log = self.paths.logs / "s3-gateway.log"

        def bucket_step() -> str:
            try:
                created = ensure_bucket(endpoint, *keys, bucket, timeout=self.local.ready_timeout_seconds)
            except TimeoutError as exc:
                raise ComponentNotReady("s3", str(exc), str(log)) from None
            return "created" if created else Unchanged("exists")
        self.steps.run("s3", f"ensure bucket {bucket}", bucket_step)
        self.steps.run("s3", "ready: write, read, delete a scratch object", lambda: Unchanged(self._wait_ready(
            "s3", lambda: s3_round_trip(endpoint, *keys, bucket), log=log)))

    def ensure_upstream(self) -> None:
        up, state, hub = self.settings.upstream, self.state, hub_url(self.configs)
        if uses_hub_stand_in(self.configs):
            password = upstream_password(self.settings)
            if all(state.running(n) for n in HUB_PARTS):
                self.steps.unchanged("hub", "Docker Hub stand-in", f"pid {state.processes['hub'].pid}")
            else:
                def start() -> str:
                    # A survivor would hold its port or socket: stop them all, then start all.
                    self._stop_all(HUB_PARTS)
                    token, registry, front = start_hub_stand_in(
                        data_dir=self.paths.data / "hub", config_dir=self.paths.secrets, logs=self.paths.logs,
                        address=self.local.address, port=self.local.hub_port, token_port=self.local.hub_token_port,
                        username=up.username or "", password=password.reveal() if password else "",
                        register=self._register, timeout=self.local.ready_timeout_seconds)
                    return f"pids {token.pid}/{registry.pid}/{front.pid}, {hub}"
                self.steps.run("hub", "start Docker Hub stand-in", start, detail=hub)
            if self.local.seed_sample_images:
                def seed() -> str:
                    # The mirror's own account may only pull: the stand-in's seeding account pushes.
                    seeded = seed_registry(hub, hub_seeder(self.paths.secrets))
                    pushed = [s for s in seeded if s.pushed]
                    detail = f"{len(seeded)} sample images present, {len(pushed)} pushed now"
                    return detail if pushed else Unchanged(detail)
                self.steps.run("hub", "seed sample images", seed, detail=f"{len(SAMPLE_IMAGES)} images")

        def gate() -> str:
            # The registry panics at start when GET <remoteurl>/v2/ fails (distribution #4038).
            if not upstream_answers(up.url):
                raise DeployError(f"upstream {up.url} does not answer /v2/; the registry would crash at start")
            return Unchanged(f"{up.url} answers")
        self.steps.run("upstream", "reachable", gate, detail=up.url)

    def ensure_mirrors(self, *, replace: bool) -> None:
        """Changed mirror settings (or `replace`) replace instances one at a time, each health-checked
        before an old one leaves the proxy; nothing in flight is dropped."""
        state, steps = self.state, self.steps
        wanted = self.settings.registry.instances
        fingerprint = self._mirror_fingerprint()
        # Running is not enough: an instance that stays unhealthy (its storage check fails) for the
        # whole deadline is replaced like a dead one. A healthy one answers at once, so this is cheap.
        # When every instance is being replaced anyway, one that does not answer now is not waited for:
        # it leaves service first, and the healthy ones are retired one by one as usual.
        wait = not steps.dry_run and not replace
        live = [n for n in state.mirrors if state.running(n) and self._mirror_recovers(n, wait=wait)]
        current = (state.fingerprints.get("mirror") == fingerprint and len(live) == wanted
                   and live == state.mirrors)
        if current and not replace:
            steps.unchanged("mirror", f"{wanted} instance(s)", f"generation {state.generation}")
            return
        proxy_up = state.running("proxy")
        old = list(live)
        generation = state.generation + 1
        new_names = [f"mirror-{generation}-{i}" for i in range(wanted)]
        if not steps.dry_run:
            state.generation = generation
        # Instances that died, or run but never turned healthy, leave service straight away; a running
        # one is stopped, or it would go on holding its socket and memory, known to nobody.
        for name in [n for n in state.mirrors if n not in live]:
            if state.running(name):
                steps.run(name, "stop unhealthy instance", lambda name=name: self._stop(name))
            else:
                steps.run(name, "drop dead instance", lambda name=name: self._forget(name))

        for name in new_names:
            steps.run(name, "start and health-check", lambda name=name: self._start_mirror(name),
                      detail="new instance")
            if proxy_up:
                steps.run("proxy", f"add {name}",
                          lambda name=name: set_service(self.configs, state, state.mirrors + [name]))
            elif not steps.dry_run:
                state.mirrors.append(name)
            if old and proxy_up:
                self._retire(old.pop(0))
        for victim in old:
            if proxy_up:
                self._retire(victim)
            else:
                steps.run(victim, "stop", lambda victim=victim: self._stop(victim))
        if not steps.dry_run:
            state.fingerprints["mirror"] = fingerprint

    def ensure_fanout(self) -> None:
        """blob-fanout before the proxy that sends it blobs (until it answers, the proxy's backup way
        to the mirrors serves them); restarted when its source or command line changed."""
        state, fingerprint = self.state, fanout_fingerprint(self.paths)
        if state.running(FANOUT) and state.fingerprints.get(FANOUT) == fingerprint:
            self.steps.unchanged(FANOUT, "start", f"pid {state.processes[FANOUT].pid}")
            return

        def start() -> str:
            self._stop_all((FANOUT,))
            rec = start_fanout(self.paths, register=self._register, timeout=self.local.ready_timeout_seconds)
            state.fingerprints[FANOUT] = fingerprint
            return f"pid {rec.pid}"
        self.steps.run(FANOUT, "start" if FANOUT not in state.processes else "restart (new build)", start,
                       detail="unix socket")

    def ensure_nginx(self, name: Nginx) -> None:
        state, conf = self.state, self.paths.config / f"{name}.conf"
        text = self.configs.nginx_conf(name, state.mirrors)
        changed = not conf.exists() or conf.read_text() != text
        if state.running(name) and not changed:
            self.steps.unchanged(name, "nginx", f"pid {state.processes[name].pid}")
            return
        if state.running(name):
            def reload() -> str:
                conf.write_text(text)
                reload_nginx(state.processes[name], conf=conf, prefix=self.paths.nginx_prefix(name))
                self._close_sockets(name)
                return "config changed; reloaded gracefully"
            self.steps.run(name, "reload nginx", reload)
            return

        def start() -> str:
            conf.write_text(text)
            ready: Path | tuple[str, int] = (self.paths.proxy_socket if name == "proxy"
                                             else (self.local.address, self.local.public_port))
            # Workers of a master that was killed outlive it and keep serving the old config.
            self._stop_all((name,))
            if name == "proxy":
                for socket in (self.paths.proxy_socket, self.paths.mirror_pass_socket):
                    socket.unlink(missing_ok=True)  # left behind by a killed nginx; it would block bind()
            rec = start_nginx(name, conf=conf, prefix=self.paths.nginx_prefix(name),
                              log=self.paths.logs / f"{name}.stderr.log", ready=ready,
                              register=self._register, timeout=self.local.ready_timeout_seconds)
            self._close_sockets(name)
            return f"pid {rec.pid}"
        self.steps.run(name, "start nginx", start,
                       detail=f"http://{self.configs.endpoint}" if name == "router" else "unix socket")

    # ------------------------------------------------------------------ helpers

    def _close_sockets(self, name: Nginx) -> None:
        """nginx makes its unix sockets 0666 (a reload too, for a socket the new config adds); the
        folder alone would guard the trusted hops."""
        if name == "proxy":
            for socket in (self.paths.proxy_socket, self.paths.mirror_pass_socket):
                if socket.exists():
                    socket.chmod(0o660)

    def _retire(self, victim: str) -> None:
        self.steps.run("proxy", f"remove {victim}", lambda: set_service(
            self.configs, self.state, [n for n in self.state.mirrors if n != victim]))
        self.steps.run(victim, "stop (drains in-flight pulls)", lambda: self._stop(victim))

    def _start_mirror(self, name: str) -> str:
        path = self.paths.config / f"{name}.yml"
        path.write_text(registry_config_yaml(self.configs.mirror_config(name)))
        started = start_mirror_instance(name, executable=mirror_registry_binary(self.settings.registry.version),
                                        config_file=path, socket_path=self.paths.mirror_socket(name),
                                        log=self.paths.logs / f"{name}.log",
                                        secrets=mirror_secret_env(self.settings, self.secrets),
                                        register=self._register, timeout=self.local.ready_timeout_seconds)
        return started.detail()

    def _mirror_fingerprint(self) -> str:
        """Changes with anything an instance starts from: its config, the binary's version, the S3 key
        and the upstream password (hashed: the state file holds no secret)."""
        config = self.configs.mirror_config("mirror")
        config["http"]["addr"] = "<socket>"
        material = [registry_config_yaml(config), registry_version(self.settings.registry.version) or "",
                    hashlib.sha256(self.secrets.s3_secret_key.reveal().encode()).hexdigest()]
        password = upstream_password(self.settings)
        if password is not None:
            material.append(hashlib.sha256(password.reveal().encode()).hexdigest())
        return hashlib.sha256("\n".join(material).encode()).hexdigest()[:16]

    def _mirror_recovers(self, name: str, *, wait: bool) -> bool:
        socket_path = self.paths.mirror_socket(name)
        if not wait:
            return mirror_healthy(socket_path)
        try:
            return bool(wait_until(lambda: mirror_healthy(socket_path), timeout=self.local.ready_timeout_seconds,
                                   what=name, interval=0.25))
        except TimeoutError:
            return False

    def _stop(self, name: str) -> str:
        rec = self.state.processes.get(name)
        if rec is not None:
            stop_recorded(rec)
        return self._forget(name)

    def _forget(self, name: str) -> str:
        self.state.processes.pop(name, None)
        if name in self.state.mirrors:
            self.state.mirrors.remove(name)
        self.state.save(self.paths.state_file)
        return "stopped"

    def _stop_all(self, names: tuple[str, ...]) -> None:
        """Stop these processes (live ones and the leftovers of dead ones) in stop order, and forget them."""
        storage_alive = storage_parts_alive(self.state.processes)
        for name in sorted((n for n in names if n in self.state.processes), key=stop_rank):
            rec = self.state.processes[name]
            stop_recorded(rec, storage_alive=storage_alive) if rec.alive() else reap_session(rec)
            del self.state.processes[name]
        self.state.save(self.paths.state_file)

    def _register(self, record: ProcessRecord) -> None:
        """Record a process the moment it runs, so a deploy that fails or dies later leaves none unknown."""
        self.state.processes[record.name] = record
        self.state.save(self.paths.state_file)

    def _wait_ready(self, component: str, probe: Callable[[], object], *, log: Path) -> str:
        try:
            return str(wait_until(probe, timeout=self.local.ready_timeout_seconds, what=component, interval=0.25))
        except TimeoutError as exc:
            raise ComponentNotReady(component, str(exc), str(log)) from None
