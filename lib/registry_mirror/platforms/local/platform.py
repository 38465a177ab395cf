"""`LocalPlatform`: the `Platform` protocol over the local stack's modules (rollout, state, configs,
the programs), each method a few lines."""
from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ...client_pull import PullResult, pull_with_skopeo
from ...credentials import LocalStackSecrets
from ...deploy_report import DeployReport, DeployStep, StepRecorder
from ...errors import DeployError, ParameterError, VerificationError
from ...parameters import LocalSettings, Settings, resolve_project_path
from ...preflight import PreflightReport
from ...processes import ProcessRecord, gone, request_stop
from ...rendering import ClientConfigs
from ...s3_clients import s3_client
from ...security_rules import SecurityRules
from ..base import COMPONENTS, CheckFn, PlatformStatus
from .configs import StackConfigs
from .fanout import FANOUT, fanout_healthy
from .mirrors import mirror_healthy, mirror_secret_env, upstream_answers
from .nginx import nginx_answers
from .paths import StackPaths
from .rollout import Rollout, hub_url, mirror_stop_seconds, preflight, stop_recorded
from .seaweedfs import cached_blob_readable, s3_round_trip, storage_parts_alive
from .state import StackState, is_mirror, process_table, stack_status, stop_rank

if TYPE_CHECKING:
    from .evidence import LocalEvidence
    from .faults import LocalFaults

API_CALL_COLUMNS = ["method", "path", "status", "request_id", "sent"]
# Seconds each S3 call of status's round trip may take: a storage that answers slower is not ready.
STATUS_PROBE_SECONDS = 3


class LocalPlatform:
    """Deploy, redeploy (rolling), inspect and stop the local stack described by `settings`."""

    name = "local"
    components = ("all",)

    def __init__(self, settings: Settings, rules: SecurityRules) -> None:
        if settings.local is None or settings.storage is None:
            raise ValueError("LocalPlatform needs settings for platform local")
        self.settings = settings
        self.local: LocalSettings = settings.local
        self.rules = rules
        self.paths = StackPaths(resolve_project_path(self.local.state_dir))
        self.configs = StackConfigs(settings, rules, self.paths)

    @property
    def endpoint(self) -> str:
        """host:port of the public endpoint (the router stand-in)."""
        return self.configs.endpoint

    @property
    def public_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def hub_url(self) -> str:
        """Where the Docker Hub stand-in answers (when the parameters use it as the upstream)."""
        return hub_url(self.configs)

    # ------------------------------------------------------------------ lifecycle

    def preflight(self) -> PreflightReport:
        return preflight(self.configs)

    def deploy(self, *, dry_run: bool = False, component: str = "all", replace_mirrors: bool = False) -> DeployReport:
        """Bring the stack to what the parameters say; idempotent. Changed mirror settings (or
        `replace_mirrors`) replace instances one at a time, so nothing in flight is dropped."""
        if component != "all":
            raise ParameterError("the local platform deploys the whole stack: use component 'all'")
        report = DeployReport(platform=self.name, dry_run=dry_run, endpoint=self.endpoint)
        self.preflight().raise_for_failures()
        steps = StepRecorder(report)
        state = StackState.load(self.paths.state_file)
        if not dry_run:
            self.paths.create()
        secrets = LocalStackSecrets.load_or_create(self.paths.secrets_file, create=not dry_run)
        try:
            Rollout(self.configs, state, steps, secrets).run(replace_mirrors=replace_mirrors)
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
                self.paths.seal()  # what the programs created during the deploy, too
        return report

    def status(self) -> PlatformStatus:
        """What runs, what answers, and which of the lifecycle states the stack is in."""
        from .exposure import exposed_to_others

        state = StackState.load(self.paths.state_file)
        # Probed all at once: a hung part costs one probe timeout, not one per process that waits on it.
        live = [n for n, r in state.processes.items() if r.alive()]
        with ThreadPoolExecutor(max_workers=max(1, len(live))) as pool:
            answers = dict(zip(live, pool.map(self._answers, live)))
        processes = process_table(state, running=ProcessRecord.alive, ready=lambda n: answers.get(n, False))
        # Only a stack that runs whole: a stopped one has no ports, and a broken one is DEGRADED already.
        whole = not processes.empty and bool(processes["running"].all() and processes["ready"].all())
        exposed: list[str] = []
        if whole:
            try:
                exposed = exposed_to_others(self)
            except (OSError, RuntimeError, KeyError, ValueError) as exc:  # unproven is not closed
                exposed = [f"could not try as another local user ({exc})"]
        return stack_status(state, processes, has_state=self.paths.state_file.exists(), exposed=exposed)

    def down(self, *, dry_run: bool = False) -> DeployReport:
        """Stop every process of the stack (data and logs stay for the analysis notebooks)."""
        report = DeployReport(platform=self.name, dry_run=dry_run, endpoint=self.endpoint, action="down")
        steps = StepRecorder(report)
        state = StackState.load(self.paths.state_file)
        drain_deadline = None
        if not dry_run:
            # Every mirror drains at once, so a down takes one drain window, not one per instance.
            drain_deadline = time.monotonic() + mirror_stop_seconds()
            for rec in (r for n, r in state.processes.items() if is_mirror(n) and r.alive()):
                request_stop(rec)
        storage_alive = storage_parts_alive(state.processes)
        for name in sorted(state.processes, key=stop_rank):
            rec = state.processes[name]
            if gone(rec):
                if not dry_run:
                    del state.processes[name]
                steps.unchanged(name, "stop", "not running")
                continue

            def stop(rec: ProcessRecord = rec, name: str = name) -> str:
                was_alive = rec.alive()
                stop_recorded(rec, storage_alive=storage_alive, drain_deadline=drain_deadline)
                del state.processes[name]
                state.save(self.paths.state_file)
                return f"pid {rec.pid} stopped" if was_alive else f"leftovers of pid {rec.pid} stopped"

            steps.run(name, "stop", stop, detail=f"pid {rec.pid}")
        if not dry_run:
            state.mirrors = []
            state.fingerprints = {}
            state.save(self.paths.state_file)
            # Nothing of the stack runs as its workers' user any more: the next deploy creates it again.
            self.paths.access.release()
        return report

    def rollback(self, *, component: str, revision: str = "", dry_run: bool = True) -> DeployReport:
        _check_component(component)
        report = DeployReport(platform=self.name, dry_run=dry_run, endpoint=self.endpoint)
        report.steps.append(DeployStep(component, "rollback", "skipped",
                                       "the local platform keeps no revisions; redeploy the previous parameters"))
        return report

    def cancel_deployments(self, *, dry_run: bool = False) -> DeployReport:
        report = DeployReport(platform=self.name, dry_run=dry_run, endpoint=self.endpoint)
        report.steps.append(DeployStep("all", "cancel deployments", "skipped",
                                       "the local platform has no deployments: a deploy runs to its end or fails"))
        return report

    def scale(self, *, component: str, instances: int, dry_run: bool = False) -> DeployReport:
        """Run `instances` mirror instances now (a deploy with that count); the parameters still say
        what the next deploy brings back."""
        if component not in ("all", "registry"):
            raise ParameterError(f"the local platform scales its mirror instances: use component 'registry', "
                                 f"got {component!r}")
        if instances < 1:
            raise ParameterError(f"instances must be at least 1, got {instances}")
        registry = self.settings.registry.model_copy(update={"instances": instances})
        scaled = LocalPlatform(self.settings.model_copy(update={"registry": registry}), self.rules)
        return scaled.deploy(dry_run=dry_run)

    # ------------------------------------------------------------------ configs and clients

    def rendered_configs(self) -> dict[str, str]:
        """Every config the deploy writes, as it would write them now (secrets are not in any)."""
        return self.configs.rendered(StackState.load(self.paths.state_file).mirrors)

    def client_configs(self) -> ClientConfigs:
        return self.configs.client_configs()

    def usage(self) -> str:
        client_dir = self.paths.client_dir
        return f"""
The mirror answers at {self.public_url} (plain HTTP, loopback only).
  skopeo: skopeo --registries-conf {client_dir}/registries.conf inspect docker://docker.io/library/hello:latest
  podman: CONTAINERS_REGISTRIES_CONF={client_dir}/registries.conf podman pull docker.io/library/hello:latest
  docker: add {{"registry-mirrors": ["{self.public_url}"], "insecure-registries": ["{self.endpoint}"]}}
          to /etc/docker/daemon.json (a Docker engine is needed; none runs on this machine)
  sample images: library/hello:latest, library/multiarch:latest (amd64+arm64), library/alpine-sample:3.20
  stop everything: make down
"""

    def verification_pull(self, image: str, *, dry_run: bool = False) -> PullResult | None:
        """Pull `image` by its docker.io name through the public endpoint, as a user's client would."""
        if dry_run:
            return None
        try:
            pulled = pull_with_skopeo(image, registries_conf=self.client_configs().registries_conf)
        except VerificationError as exc:
            # Tell "the storage is down" apart from "the mirror is broken": the remedy differs.
            cause = ("S3 is down too: restore it, then pull again" if not self.storage_answers() else
                     "S3 answers, so the proxy or a mirror is broken: read `make status` and the logs")
            raise VerificationError(f"{exc} ({cause})") from None
        if not self.storage_answers():
            return replace(pulled, note="S3 DOWN: served from the proxy's cache; images it does not hold fail "
                                        "until S3 is back")
        return pulled

    # ------------------------------------------------------------------ checks, triage, drills

    def policy_checks(self, *, public_url: str = "", image: str = "") -> Mapping[str, CheckFn]:
        if public_url:
            raise ParameterError("public_url is for Cloud Foundry; the local platform knows its endpoint")
        from .checks import local_checks

        return local_checks(self, image=image or None)

    def triage_evidence(self, *, probe_image: str, recent_minutes: float, stuck_minutes: float,
                        public_url: str = "") -> LocalEvidence:
        if public_url:
            raise ParameterError("parameter 'public_url' is for Cloud Foundry; the local platform knows its endpoint")
        from .evidence import LocalEvidence

        return LocalEvidence(self, probe_image=probe_image, recent_minutes=recent_minutes)

    def remedy(self, name: str, *, scale_to: int = 0, dry_run: bool = False) -> str:
        if name in ("cancel-deployment", "rollback"):
            raise ParameterError(f"remedy {name!r} is for Cloud Foundry; the local platform has no deployments")
        if name == "scale-mirrors":
            return self.scale(component="registry", instances=scale_to, dry_run=dry_run).changes()
        # redeploy, redeploy-proxy (the proxy is part of the whole stack), replace-mirrors
        return self.deploy(dry_run=dry_run, replace_mirrors=name == "replace-mirrors").changes()

    def faults(self) -> LocalFaults:
        from .faults import LocalFaults

        return LocalFaults(self)

    def api_calls(self) -> pd.DataFrame:
        """The local platform calls no platform API."""
        return pd.DataFrame(columns=API_CALL_COLUMNS)

    def access_logs(self, folder: str, *, since_ns: int = 0) -> tuple[list[str], list[str]]:
        """The stack's own log files, read where they are (`folder` and `since_ns` are not needed: the
        files hold everything since the stack first started)."""
        logs = self.paths.logs
        return [str(logs / "proxy.access.log")], sorted(str(p) for p in logs.glob("mirror-*.log"))

    # ------------------------------------------------------------------ read views

    def running_processes(self) -> dict[str, ProcessRecord]:
        state = StackState.load(self.paths.state_file)
        return {n: r for n, r in state.processes.items() if r.alive()}

    def mirror_sockets(self) -> list[Path]:
        state = StackState.load(self.paths.state_file)
        return [self.paths.mirror_socket(n) for n in state.mirrors]

    def mirror_secret_env(self, secrets: LocalStackSecrets) -> dict[str, str]:
        """What a mirror instance gets as environment, not config: S3 keys, http secret, upstream password."""
        return mirror_secret_env(self.settings, secrets)

    def storage_answers(self) -> bool:
        """Does S3 take a signed write, read and delete now?"""
        return self._answers("s3-gateway")

    def _answers(self, name: str) -> bool:
        """The cheap readiness probe behind `status`: does this process answer what its client asks?"""
        try:
            if name.startswith("mirror-"):
                return mirror_healthy(self.paths.mirror_socket(name))
            if name == "proxy":
                return nginx_answers(self.paths.proxy_socket)
            if name == FANOUT:
                return fanout_healthy(self.paths)
            if name == "router":
                return nginx_answers((self.local.address, self.local.public_port))
            if name in ("hub", "hub-front"):
                return upstream_answers(self.hub_url, timeout=2)
            if name == "s3-gateway":
                secrets = LocalStackSecrets.load_or_create(self.paths.secrets_file, create=False)
                assert self.settings.storage is not None
                keys = (secrets.s3_access_key.reveal(), secrets.s3_secret_key.reveal())
                s3 = s3_client(endpoint=self.configs.s3_endpoint, access_key=keys[0], secret_key=keys[1],
                               probe_timeout=STATUS_PROBE_SECONDS)
                s3_round_trip(self.configs.s3_endpoint, *keys, self.settings.storage.bucket, s3=s3)
                # Errors for what the registry believes it holds (its volumes deleted under it).
                cached_blob_readable(s3, self.settings.storage.bucket, self.settings.storage.root_directory)
            return True
        except Exception:  # noqa: BLE001 - a probe that fails means "not ready", which is what we report
            return False


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ParameterError(f"parameter 'component' must be one of {', '.join(COMPONENTS)}, got {component!r}")
