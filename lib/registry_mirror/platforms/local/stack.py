"""The local platform: the whole mirror topology on this machine's loopback, all real software.

    client -> router stand-in (nginx, TCP, public) -> security proxy (nginx, unix socket)
           -> mirror instances (docker-registry 2.8.2, unix sockets) -> S3 (SeaweedFS)
                                        \\-> upstream: Docker Hub stand-in (docker-registry, basic auth)

Only the router has a client-reachable TCP port. State (PIDs, generation, fingerprints) lives in
`<state_dir>/stack.json`, so a later notebook or `make down` finds and stops what an earlier one started.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from ...credentials import LocalStackSecrets, upstream_password
from ...deploy_report import DeployReport, StepRecorder, Unchanged
from ...errors import ComponentNotReady, DeployError, ParameterError
from .components import (
    SEAWEEDFS_LAYOUT, SEAWEEDFS_PARTS, binary, ensure_bucket, hub_seeder, mirror_healthy,
    mirror_registry_binary, nginx_answers, nginx_argv, reload_nginx, registry_version, s3_round_trip, start_hub_stand_in, start_mirror_instance, start_nginx, start_seaweedfs, stop_seaweedfs_part,
    upstream_answers,
)
from ...parameters import LocalSettings, Settings, resolve_project_path
from ...preflight import Check, PreflightReport
from ...processes import (
    ProcessRecord, gone, port_is_free, reap_session, session_members, stop_process, wait_until,
)
from ...registry_config import Listener, S3Location, registry_config, registry_config_yaml
from ...rendering import BlobCache, ClientConfigs, ManifestCache, NginxTarget, render_client_configs, render_nginx_conf, render_router_conf
from ...sample_images import SAMPLE_IMAGES, seed_registry
from ...security_rules import SecurityRules
from .worker_access import WorkerAccess, WorkerUserMissing, worker_access

# Clients' side first, storage last; SeaweedFS's parts in the reverse of their start order.
STOP_ORDER = ("router", "proxy", "mirror", "hub", "hub-token", *reversed(SEAWEEDFS_PARTS), "s3")


def stop_rank(name: str) -> int:
    """Where a process of the stack comes in the stop order (mirror instances are `mirror-<gen>-<i>`)."""
    role = "mirror" if name.startswith("mirror-") else name
    return STOP_ORDER.index(role) if role in STOP_ORDER else len(STOP_ORDER)


def _stop_record(record: ProcessRecord) -> None:
    stop_seaweedfs_part(record) if record.name in SEAWEEDFS_PARTS else stop_process(record)


class LocalPlatform:
    """Deploy, redeploy (rolling), inspect and stop the local stack described by `settings`."""

    def __init__(self, settings: Settings, rules: SecurityRules) -> None:
        if settings.local is None or settings.storage is None:
            raise ValueError("LocalPlatform needs settings for platform local")
        self.settings = settings
        self.local: LocalSettings = settings.local
        self.rules = rules
        self.paths = StackPaths(resolve_project_path(self.local.state_dir))

    # ------------------------------------------------------------------ public API

    @property
    def endpoint(self) -> str:
        """host:port of the public endpoint (the router stand-in)."""
        return f"{self.local.address}:{self.local.public_port}"

    @property
    def hub_url(self) -> str:
        return f"http://{self.local.address}:{self.local.hub_port}"

    @property
    def uses_hub_stand_in(self) -> bool:
        return self.settings.upstream.url == self.hub_url

    def preflight(self) -> PreflightReport:
        """Checks that change nothing: binaries, versions, free ports, secrets, upstream."""
        state = StackState.load(self.paths.state_file)
        checks: list[Check] = []
        want = self.settings.registry.version
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
        ports = {"router": self.local.public_port, "s3-gateway": self.local.s3_port}
        if self.uses_hub_stand_in:
            ports["hub"] = self.local.hub_port
            ports["hub-token"] = self.local.hub_token_port
        for component, port in ports.items():
            # A killed nginx master's workers still hold its port: ours too, and the deploy stops them.
            ours = state.running(component) or (component in state.processes
                                                and bool(session_members(state.processes[component])))
            free = ours or port_is_free(self.local.address, port)
            checks.append(Check(f"port {port} ({component})", free,
                                "held by this stack" if ours else ("free" if free else "in use by another program")))
        try:
            upstream_password(self.settings)
            checks.append(Check("upstream credentials", True, "present" if self.settings.upstream.username
                                else "anonymous"))
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            checks.append(Check("upstream credentials", False, str(exc)))
        if not self.uses_hub_stand_in:
            # The registry panics at start when the upstream does not answer (distribution #4038).
            up = upstream_answers(self.settings.upstream.url)
            checks.append(Check("upstream reachable", up, self.settings.upstream.url))
        # Look at the nearest folder that exists: a preflight creates nothing.
        existing = next(p for p in (self.paths.root, *self.paths.root.parents) if p.exists())
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
        checks.append(Check("state dir writable", writable, str(self.paths.root)))
        try:
            user = self.paths.access.user
            checks.append(Check("nginx worker user", True, user or "the invoking user (not root)"))
        except WorkerUserMissing as exc:
            checks.append(Check("nginx worker user", False, str(exc)))
        return PreflightReport(checks)

    def deploy(self, *, dry_run: bool = False, replace_mirrors: bool = False, component: str = "all") -> DeployReport:
        """Bring the stack to what the parameters say; idempotent.

        Changed mirror settings (or `replace_mirrors`) replace instances one at a time, each
        health-checked before an old one leaves the proxy; nothing in flight is dropped.
        """
        if component != "all":
            raise ParameterError("the local platform deploys the whole stack: use component 'all'")
        report = DeployReport(platform="local", dry_run=dry_run, endpoint=self.endpoint)
        self.preflight().raise_for_failures()
        steps = StepRecorder(report)
        state = StackState.load(self.paths.state_file)
        if not dry_run:
            self.paths.create()
        secrets = LocalStackSecrets.load_or_create(self.paths.secrets_file, create=not dry_run)
        try:
            self._ensure_s3(steps, state, secrets)
            self._ensure_upstream(steps, state)
            self._ensure_mirrors(steps, state, secrets, replace=replace_mirrors)
            self._ensure_nginx(steps, state, "proxy")
            self._ensure_nginx(steps, state, "router")
            steps.run("router", "ready: the public endpoint answers through proxy and mirrors", lambda: Unchanged(
                self._wait_ready("router", lambda: nginx_answers((self.local.address, self.local.public_port))
                                 and "answers", log=self.paths.logs / "proxy.stderr.log")))
            if not dry_run:
                self.paths.client_dir.mkdir(parents=True, exist_ok=True)
                for name, text in self.client_configs().as_dict().items():
                    (self.paths.client_dir / name).write_text(text)
        except Exception as exc:
            report.error = f"{exc}"
            where = report.steps[-1].component if report.steps else "start"
            state.last_deploy = {"ok": False, "failed_at": where, "error": str(exc)[:500]}
            raise DeployError(f"local deploy failed at {where}: {exc}") from exc
        else:
            state.last_deploy = {"ok": True}
        finally:
            if not dry_run:
                state.save(self.paths.state_file)
        return report

    def status(self) -> StackStatus:
        """What runs, what answers, and which of the lifecycle states the stack is in."""
        state = StackState.load(self.paths.state_file)
        rows = []
        for name in sorted(state.processes, key=stop_rank, reverse=True):
            rec = state.processes[name]
            running = rec.alive()
            rows.append({"component": name, "pid": rec.pid, "running": running,
                         "ready": running and self._answers(name),
                         "in_service": name in state.mirrors or not name.startswith("mirror"),
                         "log": rec.log})
        frame = pd.DataFrame(rows, columns=["component", "pid", "running", "ready", "in_service", "log"])
        return StackStatus(condition=_condition(state, frame, self.paths.state_file.exists()), processes=frame)

    def down(self, *, dry_run: bool = False) -> DeployReport:
        """Stop every process of the stack (data and logs stay for the analysis notebooks)."""
        report = DeployReport(platform="local", dry_run=dry_run, endpoint=self.endpoint, action="down")
        steps = StepRecorder(report)
        state = StackState.load(self.paths.state_file)
        for name in sorted(state.processes, key=stop_rank):
            rec = state.processes[name]
            if gone(rec):
                if not dry_run:
                    del state.processes[name]
                steps.unchanged(name, "stop", "not running")
                continue

            def stop(rec: ProcessRecord = rec, name: str = name) -> str:
                was_alive = rec.alive()
                _stop_record(rec)
                del state.processes[name]
                state.save(self.paths.state_file)
                return f"pid {rec.pid} stopped" if was_alive else f"leftovers of pid {rec.pid} stopped"

            steps.run(name, "stop", stop, detail=f"pid {rec.pid}")
        if not dry_run:
            state.mirrors = []
            state.fingerprints = {}
            state.save(self.paths.state_file)
        return report

    def rendered_configs(self) -> dict[str, str]:
        """Every config the deploy writes, as it would write them now (secrets are not in any)."""
        state = StackState.load(self.paths.state_file)
        return {
            "registry config (per instance)": registry_config_yaml(self._mirror_config("mirror-N")),
            "security proxy nginx.conf": self._render_nginx("proxy", state),
            "router stand-in nginx.conf": self._render_nginx("router", state),
            **{f"client {k}": v for k, v in self.client_configs().as_dict().items()},
        }

    def client_configs(self) -> ClientConfigs:
        # Locally the fallback location is the mirror too, so a failing mirror never reaches out.
        return render_client_configs(self.endpoint, insecure=True, primary=self.endpoint)

    def running_processes(self) -> dict[str, ProcessRecord]:
        state = StackState.load(self.paths.state_file)
        return {n: r for n, r in state.processes.items() if r.alive()}

    def storage_answers(self) -> bool:
        """Does S3 take a signed write, read and delete now?"""
        return self._answers("s3-gateway")

    def mirror_sockets(self) -> list[Path]:
        state = StackState.load(self.paths.state_file)
        return [self.paths.mirror_socket(n) for n in state.mirrors]

    # ------------------------------------------------------------------ steps

    def _ensure_s3(self, steps: StepRecorder, state: StackState, secrets: LocalStackSecrets) -> None:
        assert self.settings.storage is not None
        endpoint = f"http://{self.local.address}:{self.local.s3_port}"
        keys = (secrets.s3_access_key.reveal(), secrets.s3_secret_key.reveal())
        if all(state.running(p) for p in SEAWEEDFS_PARTS) and state.fingerprints.get("s3") == SEAWEEDFS_LAYOUT:
            steps.unchanged("s3", "SeaweedFS", f"pids {', '.join(str(state.processes[p].pid) for p in SEAWEEDFS_PARTS)}")
        else:
            def start() -> str:
                # A part that survived alone would hold its port and its store's lock: restart them together.
                self._stop_all(state, ("s3", *SEAWEEDFS_PARTS))
                recs = start_seaweedfs(data_dir=self.paths.data / "s3", config_dir=self.paths.secrets,
                                       run_dir=self.paths.run, logs=self.paths.logs, address=self.local.address,
                                       s3_port=self.local.s3_port, access_key=keys[0], secret_key=keys[1],
                                       register=self._register(state), timeout=self.local.ready_timeout_seconds)
                state.fingerprints["s3"] = SEAWEEDFS_LAYOUT
                return f"pids {', '.join(str(r.pid) for r in recs)}, S3 API {endpoint}"
            steps.run("s3", "start SeaweedFS (master, volume, filer, S3 gateway)", start, detail=endpoint)
        bucket = self.settings.storage.bucket
        log = self.paths.logs / "s3-gateway.log"

        def bucket_step() -> str:
            try:
                created = ensure_bucket(endpoint, *keys, bucket, timeout=self.local.ready_timeout_seconds)
            except TimeoutError as exc:
                raise ComponentNotReady("s3", str(exc), str(log)) from None
            return "created" if created else Unchanged("exists")
        steps.run("s3", f"ensure bucket {bucket}", bucket_step)
        steps.run("s3", "ready: write, read, delete a scratch object", lambda: Unchanged(self._wait_ready(
            "s3", lambda: s3_round_trip(endpoint, *keys, bucket), log=log)))

    def _ensure_upstream(self, steps: StepRecorder, state: StackState) -> None:
        up = self.settings.upstream
        if self.uses_hub_stand_in:
            password = upstream_password(self.settings)
            if state.running("hub") and state.running("hub-token"):
                steps.unchanged("hub", "Docker Hub stand-in", f"pid {state.processes['hub'].pid}")
            else:
                def start() -> str:
                    # The survivor of the pair would hold its port: stop it, then start both.
                    self._stop_all(state, ("hub", "hub-token"))
                    token, hub = start_hub_stand_in(
                        data_dir=self.paths.data / "hub", config_dir=self.paths.secrets, logs=self.paths.logs,
                        address=self.local.address, port=self.local.hub_port, token_port=self.local.hub_token_port,
                        username=up.username or "", password=password.reveal() if password else "",
                        register=self._register(state), timeout=self.local.ready_timeout_seconds)
                    return f"pids {token.pid}/{hub.pid}, {self.hub_url}"
                steps.run("hub", "start Docker Hub stand-in", start, detail=self.hub_url)
            if self.local.seed_sample_images:
                def seed() -> str:
                    # The mirror's own account may only pull: the stand-in's seeding account pushes.
                    seeded = seed_registry(self.hub_url, hub_seeder(self.paths.secrets))
                    pushed = [s for s in seeded if s.pushed]
                    detail = f"{len(seeded)} sample images present, {len(pushed)} pushed now"
                    return detail if pushed else Unchanged(detail)
                steps.run("hub", "seed sample images", seed, detail=f"{len(SAMPLE_IMAGES)} images")

        def gate() -> str:
            # The registry panics at start when GET <remoteurl>/v2/ fails (distribution #4038).
            if not upstream_answers(up.url):
                raise DeployError(f"upstream {up.url} does not answer /v2/; the registry would crash at start")
            return Unchanged(f"{up.url} answers")
        steps.run("upstream", "reachable", gate, detail=up.url)

    def _ensure_mirrors(self, steps: StepRecorder, state: StackState, secrets: LocalStackSecrets, *,
                        replace: bool) -> None:
        wanted = self.settings.registry.instances
        fingerprint = self._mirror_fingerprint(secrets)
        # Running is not enough: an instance that stays unhealthy (its storage check fails) for the
        # whole deadline is replaced like a dead one. A healthy one answers at once, so this is cheap.
        live = [n for n in state.mirrors if state.running(n) and self._mirror_recovers(n, wait=not steps.dry_run)]
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
        dead = [n for n in state.mirrors if n not in live]
        for name in dead:
            if state.running(name):
                steps.run(name, "stop unhealthy instance", lambda name=name: self._stop(state, name))
            else:
                steps.run(name, "drop dead instance", lambda name=name: self._forget(state, name))

        for i, name in enumerate(new_names):
            steps.run(name, "start and health-check", lambda name=name: self._start_mirror(state, name, secrets),
                      detail="new instance")
            if proxy_up:
                steps.run("proxy", f"add {name}", lambda name=name: self._set_service(state, state.mirrors + [name]))
            elif not steps.dry_run:
                state.mirrors.append(name)
            if old and proxy_up:
                victim = old.pop(0)
                self._retire(steps, state, victim)
        for victim in old:
            if proxy_up:
                self._retire(steps, state, victim)
            else:
                steps.run(victim, "stop", lambda victim=victim: self._stop(state, victim))
        if not steps.dry_run:
            state.fingerprints["mirror"] = fingerprint

    def _retire(self, steps: StepRecorder, state: StackState, victim: str) -> None:
        steps.run("proxy", f"remove {victim}", lambda: self._set_service(
            state, [n for n in state.mirrors if n != victim]))
        steps.run(victim, "stop (drains in-flight pulls)", lambda: self._stop(state, victim))

    def _ensure_nginx(self, steps: StepRecorder, state: StackState, name: str) -> None:
        conf = self.paths.config / f"{name}.conf"
        text = self._render_nginx(name, state)
        changed = not conf.exists() or conf.read_text() != text
        if state.running(name) and not changed:
            steps.unchanged(name, "nginx", f"pid {state.processes[name].pid}")
            return
        if state.running(name):
            def reload() -> str:
                conf.write_text(text)
                reload_nginx(state.processes[name], conf=conf, prefix=self.paths.nginx_prefix(name))
                return "config changed; reloaded gracefully"
            steps.run(name, "reload nginx", reload)
            return

        def start() -> str:
            conf.write_text(text)
            ready: Path | tuple[str, int] = (self.paths.proxy_socket if name == "proxy"
                                             else (self.local.address, self.local.public_port))
            # Workers of a master that was killed outlive it and keep serving the old config.
            self._stop_all(state, (name,))
            if name == "proxy" and self.paths.proxy_socket.exists():
                self.paths.proxy_socket.unlink()  # left behind by a killed nginx; it would block bind()
            rec = start_nginx(name, conf=conf, prefix=self.paths.nginx_prefix(name),
                              log=self.paths.logs / f"{name}.stderr.log", ready=ready,
                              register=self._register(state), timeout=self.local.ready_timeout_seconds)
            return f"pid {rec.pid}"
        steps.run(name, "start nginx", start,
                  detail=f"http://{self.endpoint}" if name == "router" else "unix socket")

    # ------------------------------------------------------------------ helpers

    def _render_nginx(self, name: str, state: StackState) -> str:
        prefix = self.paths.nginx_prefix(name)
        if name == "router":
            target = NginxTarget.local(prefix, name=name, listen=self.endpoint, logs=self.paths.logs,
                                       user=self.paths.access.user, temp_dir=self.paths.nginx_temp)
            return render_router_conf(target, listen=self.endpoint, proxy_socket=self.paths.proxy_socket)
        servers = tuple(f"unix:{self.paths.mirror_socket(n)}" for n in state.mirrors)
        target = NginxTarget.local(prefix, name=name, listen=f"unix:{self.paths.proxy_socket}",
                                   logs=self.paths.logs, upstream_servers=servers, user=self.paths.access.user,
                                   temp_dir=self.paths.nginx_temp)
        # The router stand-in connects over a unix socket: that, and only that, is the trusted hop.
        cache = BlobCache.sized(self.settings.proxy.blob_cache_size, str(self.paths.blob_cache))
        return render_nginx_conf(self.rules, target, real_ip_from=["unix:", *self.rules.trusted_routers],
                                 public_host=self.endpoint, expose_catalog=self.settings.proxy.expose_catalog,
                                 blob_cache=cache,
                                 manifest_cache=ManifestCache.from_settings(self.settings,
                                                                            str(self.paths.manifest_cache)))

    def _set_service(self, state: StackState, mirrors: list[str]) -> str:
        """Point the proxy at exactly these instances and wait until no worker uses the old set."""
        state.mirrors = mirrors
        conf = self.paths.config / "proxy.conf"
        conf.write_text(self._render_nginx("proxy", state))
        reload_nginx(state.processes["proxy"], conf=conf, prefix=self.paths.nginx_prefix("proxy"))
        state.save(self.paths.state_file)
        return f"in service: {', '.join(mirrors)}"

    def _start_mirror(self, state: StackState, name: str, secrets: LocalStackSecrets) -> str:
        config = self._mirror_config(name)
        path = self.paths.config / f"{name}.yml"
        path.write_text(registry_config_yaml(config))
        started = start_mirror_instance(name, executable=mirror_registry_binary(self.settings.registry.version),
                                        config_file=path, socket_path=self.paths.mirror_socket(name),
                                        log=self.paths.logs / f"{name}.log", secrets=self.mirror_secret_env(secrets),
                                        register=self._register(state), timeout=self.local.ready_timeout_seconds)
        return started.detail()

    def mirror_secret_env(self, secrets: LocalStackSecrets) -> dict[str, str]:
        """What a mirror instance gets as environment, not config: S3 keys, http secret, upstream password."""
        env = {"REGISTRY_STORAGE_S3_ACCESSKEY": secrets.s3_access_key.reveal(),
               "REGISTRY_STORAGE_S3_SECRETKEY": secrets.s3_secret_key.reveal(),
               "REGISTRY_HTTP_SECRET": secrets.http_secret.reveal()}
        password = upstream_password(self.settings)
        if password is not None:
            env["REGISTRY_PROXY_PASSWORD"] = password.reveal()
        return env

    def _stop(self, state: StackState, name: str) -> str:
        rec = state.processes.get(name)
        if rec is not None:
            stop_process(rec)
        return self._forget(state, name)

    def _stop_all(self, state: StackState, names: tuple[str, ...]) -> None:
        """Stop these processes (live ones and the leftovers of dead ones) in stop order, and forget them."""
        for name in sorted((n for n in names if n in state.processes), key=stop_rank):
            rec = state.processes[name]
            _stop_record(rec) if rec.alive() else reap_session(rec)
            del state.processes[name]
        state.save(self.paths.state_file)

    def _register(self, state: StackState):  # type: ignore[no-untyped-def]
        """Record a process the moment it runs, so a deploy that fails or dies later leaves none unknown."""
        def register(record: ProcessRecord) -> None:
            state.processes[record.name] = record
            state.save(self.paths.state_file)
        return register

    def _wait_ready(self, component: str, probe, *, log: Path) -> str:  # type: ignore[no-untyped-def]
        try:
            return wait_until(probe, timeout=self.local.ready_timeout_seconds, what=component, interval=0.25)
        except TimeoutError as exc:
            raise ComponentNotReady(component, str(exc), str(log)) from None

    def _mirror_recovers(self, name: str, *, wait: bool) -> bool:
        socket_path = self.paths.mirror_socket(name)
        if not wait:
            return mirror_healthy(socket_path)
        try:
            return bool(wait_until(lambda: mirror_healthy(socket_path), timeout=self.local.ready_timeout_seconds,
                                   what=name, interval=0.25))
        except TimeoutError:
            return False

    def _answers(self, name: str) -> bool:
        """The cheap readiness probe behind `status`: does this process answer what its client asks?"""
        try:
            if name.startswith("mirror-"):
                return self._mirror_recovers(name, wait=False)
            if name == "proxy":
                return nginx_answers(self.paths.proxy_socket)
            if name == "router":
                return nginx_answers((self.local.address, self.local.public_port))
            if name == "hub":
                return upstream_answers(self.hub_url, timeout=2)
            if name == "s3-gateway":
                secrets = LocalStackSecrets.load_or_create(self.paths.secrets_file, create=False)
                assert self.settings.storage is not None
                s3_round_trip(f"http://{self.local.address}:{self.local.s3_port}", secrets.s3_access_key.reveal(),
                              secrets.s3_secret_key.reveal(), self.settings.storage.bucket)
            return True
        except Exception:  # noqa: BLE001 - a probe that fails means "not ready", which is what we report
            return False

    def _forget(self, state: StackState, name: str) -> str:
        state.processes.pop(name, None)
        if name in state.mirrors:
            state.mirrors.remove(name)
        state.save(self.paths.state_file)
        return "stopped"

    def _mirror_config(self, name: str) -> dict:
        assert self.settings.storage is not None
        s3 = S3Location(bucket=self.settings.storage.bucket, region=self.settings.storage.region,
                        endpoint=f"http://{self.local.address}:{self.local.s3_port}",
                        root_directory=self.settings.storage.root_directory)
        return registry_config(self.settings, s3=s3, listener=Listener(str(self.paths.mirror_socket(name)), "unix"),
                               instance=name)

    def _mirror_fingerprint(self, secrets: LocalStackSecrets) -> str:
        config = self._mirror_config("mirror")
        config["http"]["addr"] = "<socket>"
        material = [registry_config_yaml(config), registry_version(self.settings.registry.version) or "",
                    hashlib.sha256(secrets.s3_secret_key.reveal().encode()).hexdigest()]
        password = upstream_password(self.settings)
        if password is not None:
            material.append(hashlib.sha256(password.reveal().encode()).hexdigest())
        return hashlib.sha256("\n".join(material).encode()).hexdigest()[:16]


@dataclass
class StackState:
    generation: int = 0
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    mirrors: list[str] = field(default_factory=list)  # instances in the proxy's upstream, in order
    fingerprints: dict[str, str] = field(default_factory=dict)
    last_deploy: dict[str, object] = field(default_factory=dict)  # {"ok": bool, "failed_at", "error"}

    def running(self, name: str) -> bool:
        rec = self.processes.get(name)
        return rec is not None and rec.alive()

    @classmethod
    def load(cls, path: Path) -> StackState:
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(generation=int(data["generation"]),
                       processes={k: ProcessRecord.from_json(v) for k, v in data["processes"].items()},
                       mirrors=list(data["mirrors"]), fingerprints=dict(data["fingerprints"]),
                       last_deploy=dict(data.get("last_deploy", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DeployError(f"{path} is not a stack state this library wrote ({exc.__class__.__name__}); "
                              "stop the processes it named by hand, then move the file away") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": self.generation,
                                   "processes": {k: v.to_json() for k, v in self.processes.items()},
                                   "mirrors": self.mirrors, "fingerprints": self.fingerprints,
                                   "last_deploy": self.last_deploy}, indent=2))
        tmp.replace(path)


@dataclass(frozen=True)
class StackStatus:
    """Which lifecycle state the local stack is in (one line), then each process (data)."""
    condition: str
    processes: pd.DataFrame

    @property
    def healthy(self) -> bool:
        return self.condition.startswith("RUNNING")

    def _repr_html_(self) -> str:
        return f"<p><b>{self.condition}</b></p>" + self.processes.to_html(index=False)

    def __repr__(self) -> str:
        table = self.processes.to_string(index=False) if not self.processes.empty else ""
        return f"{self.condition}\n{table}".rstrip()


def _condition(state: StackState, frame: pd.DataFrame, has_state: bool) -> str:
    """One line that tells apart every state a user can leave the stack in."""
    if not has_state:
        return "NOT DEPLOYED: no stack state here; `make demo` deploys it"
    failed = state.last_deploy.get("ok") is False
    if frame.empty:
        if failed:
            return (f"STOPPED after a failed deploy (at {state.last_deploy.get('failed_at')}): "
                    "nothing runs; data kept")
        return "STOPPED: nothing runs; data and cache kept, `make demo` starts it again"
    down = list(frame.loc[~frame["running"], "component"])
    unready = list(frame.loc[frame["running"] & ~frame["ready"], "component"])
    if len(down) == len(frame):
        return ("GONE: every recorded process is gone (machine restarted or processes killed); "
                "`make demo` starts the stack again on its kept data")
    if failed:
        return (f"DEPLOY FAILED at {state.last_deploy.get('failed_at')}: {state.last_deploy.get('error')}; "
                f"{len(frame) - len(down)} process(es) left running for debugging, `make down` stops them")
    if down or unready:
        parts = ([f"not running: {', '.join(down)}"] if down else []) + (
            [f"not answering: {', '.join(unready)}"] if unready else [])
        return f"DEGRADED: {'; '.join(parts)}; `make demo` repairs it"
    return f"RUNNING: {len(frame)} processes, all answering"


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def run(self) -> Path:
        return self.root / "run"  # 0700: pid files and SeaweedFS's runtime files

    @cached_property
    def access(self) -> WorkerAccess:
        """Who the nginx workers run as, and the folder of sockets they share with the mirrors."""
        return worker_access(self.root)

    @property
    def shared(self) -> Path:
        return self.access.shared

    @property
    def blob_cache(self) -> Path:
        return self.shared / "proxy-blob-cache"

    @property
    def manifest_cache(self) -> Path:
        return self.shared / "proxy-manifest-cache"

    @property
    def nginx_temp(self) -> Path:
        return self.shared / "nginx-temp"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def secrets_file(self) -> Path:
        return self.secrets / "stack-secrets.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def client_dir(self) -> Path:
        return self.root / "client"

    @property
    def proxy_socket(self) -> Path:
        return self.shared / "proxy.sock"

    def mirror_socket(self, name: str) -> Path:
        return self.shared / f"{name}.sock"

    def nginx_prefix(self, name: str) -> Path:
        return self.root / "nginx" / name

    def create(self) -> None:
        for d in (self.root, self.config, self.logs, self.data, self.client_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.run, self.secrets):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        for name in ("proxy", "router"):
            self.nginx_prefix(name).mkdir(parents=True, exist_ok=True)
        self.access.prepare(self.root)


__all__ = ["LocalPlatform", "StackState", "StackStatus", "StackPaths", "nginx_argv"]
