"""The Cloud Foundry platform: the `Platform` protocol over CC v3, a facade on the modules that do the work.

    session       the transport: login, retries, polling
    resources     every CC and policy-server resource, read and written
    space         the org and space the parameters name, and the two apps in it
    push/         one module per push step (manifest, environment, package, build, deployment, ...)
    services      the S3 service instance and key
    network       the network policy proxy -> mirror
    rollback      cancel a deployment in flight, or deploy an earlier revision again
    health        are the instances serving (what "deployed" means)
    preflight     before any change; capabilities: what the foundation lets this user do
    status, checks, evidence, remedies   what the runbooks read: status, policy checks, triage

Each app goes: apply manifest -> package (docker image pinned by digest for the mirror; the rendered
nginx.conf as bits for the proxy) -> build -> rolling deployment polled to FINALIZED -> every
instance RUNNING through a settle window. Only then is the fingerprint of the inputs recorded.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import pandas as pd

from .checks import cf_checks
from .evidence import CloudFoundryEvidence
from .network import ensure_network_policy
from .preflight import cf_preflight
from .push import push_app
from .push.deployment import refuse_while_in_flight
from .push.routes import verify_routes
from .remedies import run_remedy
from .resources import CloudController
from .rollback import cancel_active, roll_back
from .services import ensure_s3
from .session import CfCredentials, CfSession
from .space import APPS, Component, Space
from .status import platform_status
from ..base import COMPONENTS, CheckFn, FaultLibrary, PlatformStatus
from ...client_pull import PullResult
from ...deploy_report import DeployReport, StepRecorder
from ...errors import DeployError, ParameterError
from ...parameters import CloudFoundrySettings, Settings
from ...preflight import PreflightReport
from ...registry_config import Listener, S3Location, registry_config, registry_config_yaml
from ...rendering import MIRROR_PORT, ClientConfigs, render_cf_manifests, render_client_configs
from ...security_rules import SecurityRules

CALL_COLUMNS = ["method", "path", "status", "request_id", "sent"]
STOP_ORDER: tuple[Component, ...] = ("proxy", "registry")  # the public face first: nothing reaches the mirror then


class CloudFoundryPlatform:
    """Both apps in the org and space the parameters name. `session`: a logged-in CfSession (tests
    pass one on a fake clock); by default one is opened from the CF credentials in the environment."""

    name = "cloudfoundry"
    components = COMPONENTS

    def __init__(self, settings: Settings, rules: SecurityRules, *, session: CfSession | None = None) -> None:
        if settings.cloudfoundry is None:
            raise ValueError("CloudFoundryPlatform needs platform cloudfoundry settings")
        self.settings = settings
        self.cf: CloudFoundrySettings = settings.cloudfoundry
        self.rules = rules
        self._session = session
        if session is not None:
            session.poll_interval = self.cf.poll_interval_seconds
            session.max_retry_after = self.cf.max_retry_after_seconds
        self._space: Space | None = None

    @property
    def session(self) -> CfSession:
        if self._session is None:
            self._session = CfSession(self.cf.api, CfCredentials.from_env(),
                                      poll_interval=self.cf.poll_interval_seconds,
                                      max_retry_after=self.cf.max_retry_after_seconds)
        return self._session

    @property
    def space(self) -> Space:
        if self._space is None:
            self._space = Space(self.settings, CloudController(self.session))
        return self._space

    @property
    def endpoint(self) -> str:
        return self.cf.proxy_route

    @property
    def public_url(self) -> str:
        return f"https://{self.endpoint}"

    # ------------------------------------------------------------------ configs

    def client_configs(self) -> ClientConfigs:
        return render_client_configs(self.cf.proxy_route, insecure=False)

    def rendered_configs(self) -> dict[str, str]:
        """What the deploy sends; the bucket and region come from the service key at deploy time."""
        s3 = S3Location(bucket="<from service key>", region="<from service key>")
        manifests = render_cf_manifests(self.settings, self.rules, s3=s3)
        config = registry_config(self.settings, s3=s3, listener=Listener(f":{MIRROR_PORT}"),
                                 instance=self.cf.mirror_app)
        return {"registry config (per instance)": registry_config_yaml(config),
                "mirror manifest": manifests.mirror, "proxy manifest": manifests.proxy,
                "security proxy nginx.conf": manifests.proxy_nginx_conf,
                **{f"client {k}": v for k, v in self.client_configs().as_dict().items()}}

    def usage(self) -> str:
        configs = self.client_configs()
        return (f"The mirror answers at {self.public_url} to clients the allow-list admits (HTTPS, Docker Hub "
                f"images only).\n"
                f"  docker:     /etc/docker/daemon.json\n{_indent(configs.daemon_json)}"
                f"  containerd: /etc/containerd/certs.d/docker.io/hosts.toml\n{_indent(configs.hosts_toml)}"
                f"  podman, skopeo, CRI-O: /etc/containers/registries.conf\n{_indent(configs.registries_conf)}"
                f"  status: python -m registry_mirror status --params <this params file> (needs CF credentials)\n")

    # ------------------------------------------------------------------ preflight

    def preflight(self) -> PreflightReport:
        """Read-only checks; any failure stops the runbook before a change."""
        return cf_preflight(self.settings, given=self._session, space=lambda: self.space)

    # ------------------------------------------------------------------ changes

    def deploy(self, *, dry_run: bool = False, component: str = "all", replace_mirrors: bool = False) -> DeployReport:
        """Both apps (or one) to what the parameters render; `replace_mirrors`: a new rolling deployment
        of the mirror even when nothing changed."""
        def run(steps: StepRecorder) -> None:
            space = self.space
            wanted: list[Component] = list(APPS) if component == "all" else [_component(component)]
            refuse_while_in_flight(space, tuple(wanted))  # CC would refuse the manifest half-way
            key = ensure_s3(space, steps) if "registry" in wanted else None
            manifests = render_cf_manifests(self.settings, self.rules,
                                            s3=key.location if key else S3Location("<planned>", "<planned>"))
            for app in wanted:
                push_app(space, steps, app, manifests, key, replace=replace_mirrors and app == "registry")
            # Looked up once, after the deploys: both steps need both apps as they are now.
            mirror, proxy = space.app("registry"), space.app("proxy")
            ensure_network_policy(space.cc, steps, mirror, proxy)
            verify_routes(space, steps, mirror, proxy)
        return self._change(run, dry_run=dry_run, with_request_ids=True)

    def rollback(self, *, component: str, revision: str = "", dry_run: bool = True) -> DeployReport:
        """Cancel an active deployment; or deploy an earlier revision's droplet and configuration again,
        with today's credentials (the revision's own may be rotated away since)."""
        return self._change(lambda steps: roll_back(self.space, steps, _component(component), revision or ""),
                            dry_run=dry_run)

    def cancel_deployments(self, *, dry_run: bool = False) -> DeployReport:
        def run(steps: StepRecorder) -> None:
            for component in APPS:
                app = self.space.app(component)
                if app is not None:
                    cancel_active(self.space, steps, app)
        return self._change(run, dry_run=dry_run)

    def scale(self, *, component: str, instances: int, dry_run: bool = False) -> DeployReport:
        """Scale the app's web process in place (an incident's extra capacity) and wait until every
        instance serves. The params file still says what the next deploy brings back."""
        def run(steps: StepRecorder) -> None:
            app = self.space.existing_app(_component(component), doing="nothing to scale")
            refuse_while_in_flight(self.space, (_component(component),))  # CC refuses scale meanwhile
            process = self.space.cc.web_process(app)

            def scale() -> str:
                self.space.cc.scale(process, instances)
                return self.space.verify_serving(app)
            steps.run(app["name"], f"scale to {instances} instance(s)", scale,
                      detail=f"POST /v3/processes/{process['guid']}/actions/scale")
        return self._change(run, dry_run=dry_run)

    def down(self, *, dry_run: bool = False) -> DeployReport:
        """Stop both apps through CC; the apps, their droplets and revisions stay, and a deploy or a
        rollback starts them again."""
        def run(steps: StepRecorder) -> None:
            for component in STOP_ORDER:
                app, name = self.space.app(component), self.space.app_name(component)
                if app is None:
                    steps.unchanged(name, "stop", f"does not exist in {self.space.where}")
                elif app["state"] == "STOPPED":
                    steps.unchanged(name, "stop", "already stopped")
                else:
                    steps.run(name, "stop", lambda app=app: self.space.cc.stop_app(app) or
                              "stopped; the app, its droplet and revisions stay")
        return self._change(run, dry_run=dry_run, action="down")

    def _change(self, run: Callable[[StepRecorder], None], *, dry_run: bool,
                action: Literal["deploy", "down"] = "deploy", with_request_ids: bool = False) -> DeployReport:
        """One report for a change: planned in a dry run, failed with the error (and CF's request ids)."""
        report = DeployReport(platform=self.name, dry_run=dry_run, endpoint=self.endpoint, action=action)
        self.session.dry_run = dry_run
        try:
            run(StepRecorder(report))
        except Exception as exc:
            report.error = str(exc)
            if not with_request_ids:
                raise
            ids = ", ".join(sorted({c.request_id for c in self.session.failed_calls() if c.request_id}))
            raise DeployError(f"{exc}" + (f" [CF request ids: {ids}]" if ids and ids not in str(exc) else "")) \
                from exc
        return report

    # ------------------------------------------------------------------ reads for the runbooks

    def status(self) -> PlatformStatus:
        return platform_status(self.space)

    def verification_pull(self, image: str, *, dry_run: bool = False) -> PullResult | None:
        """None: the pipeline's integration job pulls from its workers, which the allow-list admits;
        this machine is not one of them."""
        return None

    def policy_checks(self, *, public_url: str = "", image: str = "") -> Mapping[str, CheckFn]:
        return cf_checks(self.space, self.rules, public_url=public_url, image=image)

    def triage_evidence(self, *, probe_image: str, recent_minutes: float, stuck_minutes: float,
                        public_url: str = "") -> CloudFoundryEvidence:
        return CloudFoundryEvidence(self.space, public_url=public_url or self.public_url, probe_image=probe_image,
                                    recent_minutes=recent_minutes, stuck_minutes=stuck_minutes)

    def remedy(self, name: str, *, scale_to: int = 0, dry_run: bool = False) -> str:
        return run_remedy(self, name, scale_to=scale_to, dry_run=dry_run)

    def faults(self) -> FaultLibrary:
        raise ParameterError("drill.ipynb breaks things on purpose: it runs on the local platform only "
                             f"(platform is {self.name!r})")

    def api_calls(self) -> pd.DataFrame:
        if self._session is None:
            return pd.DataFrame(columns=CALL_COLUMNS)
        return pd.DataFrame([vars(c) for c in self._session.calls], columns=CALL_COLUMNS)

    def access_logs(self, folder: str, *, since_ns: int = 0) -> tuple[list[str], list[str]]:
        """Both apps' recent lines from Log Cache (same UAA token, the root's log_cache link), written
        into `folder` as proxy.log and mirror.log. Log Cache keeps a bounded number of envelopes per
        app: read it on a schedule (the pipeline's daily retention job) so the ledger misses nothing."""
        from pathlib import Path

        from ...retention.log_cache import read_app_logs, write_lines

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for component, name in (("proxy", "proxy.log"), ("registry", "mirror.log")):
            app = self.space.existing_app(component, doing="read its logs")
            lines = read_app_logs(lambda path, query: self.session.get_linked("log_cache", path, query),
                                  app["guid"], since_ns)
            write_lines(lines, str(out / name))
            written.append(str(out / name))
        return [written[0]], [written[1]]


def _component(component: str) -> Component:
    if component not in APPS:
        raise ParameterError(f"parameter 'component' must be registry or proxy, got {component!r}")
    return component  # type: ignore[return-value]


def _indent(text: str) -> str:
    return "".join(f"      {line}\n" for line in text.splitlines())
