"""The Cloud Foundry platform: deploy, roll back and inspect the mirror and its proxy through CC v3.

Each app goes: apply manifest -> package (docker image pinned by digest for the mirror; the rendered
nginx.conf as bits for the proxy) -> build -> rolling deployment polled to FINALIZED -> every
instance RUNNING through a settle window (health.py). Only then is the fingerprint of the inputs
recorded, as an annotation: metadata makes no revision, where an env change after a deployment
would make every restart a new one. A deploy whose inputs match the fingerprint is skipped only
while its instances serve. Failures follow the environment's policy: `stop` leaves everything for
debugging, `cancel` cancels (or redeploys the previous droplet) and waits until it serves again.

Credentials live in the app's environment, which every revision captures; so a rollback never
deploys a revision as it was: it deploys that revision's droplet with that revision's configuration
and today's credentials (see README "Rollback keeps today's credentials").
"""
from __future__ import annotations

import hashlib
import io
import secrets as _random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import pandas as pd

from .capabilities import capabilities, capability_checks
from .health import InstancesUnhealthy, crash_reason, wait_serving
from .session import CfApiError, CfCredentials, CfSession
from ...credentials import Secret, secret_from_env, upstream_password
from ...deploy_report import DeployReport, StepRecorder, Unchanged
from ...errors import DeployError, PreflightError, RunbookError
from ...parameters import CloudFoundrySettings, Settings
from ...preflight import Check, PreflightReport
from ...registry_config import SECRET_ENV, Listener, S3Location, registry_config, registry_config_yaml
from ...rendering import ClientConfigs, render_cf_manifests, render_client_configs
from ...security_rules import SecurityRules

Component = Literal["registry", "proxy"]
FINGERPRINT = "registry-mirror.cloud.gov/fingerprint"  # annotation: the inputs the running app was deployed from
LEGACY_DIGEST_VAR = "MIRROR_RUNBOOK_DIGEST"  # where earlier versions kept it, in the env: removed on deploy
CREDENTIAL_VARS = frozenset(SECRET_ENV.values())  # never rolled back: a revision's copies may be revoked
MIRROR_PORT = 5000


@dataclass(frozen=True)
class S3Key:
    location: S3Location
    access_key: Secret
    secret_key: Secret


class CloudFoundryPlatform:
    """Deploy/rollback/status of both apps in the org and space the parameters name."""

    def __init__(self, settings: Settings, rules: SecurityRules, *, session: CfSession | None = None) -> None:
        if settings.cloudfoundry is None:
            raise ValueError("CloudFoundryPlatform needs platform cloudfoundry settings")
        self.settings = settings
        self.cf: CloudFoundrySettings = settings.cloudfoundry
        self.rules = rules
        self._session = session
        self.poll_interval = settings.cloudfoundry.poll_interval_seconds
        self._space_guid: str | None = None

    @property
    def session(self) -> CfSession:
        if self._session is None:
            self._session = CfSession(self.cf.api, CfCredentials.from_env())
        return self._session

    @property
    def endpoint(self) -> str:
        return self.cf.proxy_route

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

    # ------------------------------------------------------------------ preflight

    def preflight(self) -> PreflightReport:
        """Read-only checks; any failure stops the runbook before a change."""
        checks: list[Check] = []
        try:
            if self._session is None:
                CfCredentials.from_env()
            checks.append(Check("CF credentials", True, "present in the environment" if self._session is None
                                else f"given with the session ({self._session.credentials.name})"))
        except RunbookError as exc:  # SecretMissingError: which variables to set
            return PreflightReport([Check("CF credentials", False, str(exc))])
        try:
            self.session.login()
            checks.append(Check("CF login", True, f"{self.cf.api} as {self.session.credentials.name}"))
            space = self._space(required=False)
            checks.append(Check("org and space", space is not None,
                                f"{self.cf.org}/{self.cf.space}" + ("" if space else " not found")))
            if space is not None:
                apps = {component: self._app(component) for component in ("registry", "proxy")}
                for component, app in apps.items():
                    active = self._active_deployments(app["guid"]) if app else []
                    checks.append(Check(f"no deployment active ({self._app_name(component)})", not active,
                                        f"active: {active[0]['guid']}" if active else "none"))
                service = self.session.list_all("/v3/service_instances", {
                    "names": self.cf.s3_service_instance, "space_guids": space["guid"]})
                checks += capability_checks(self.session, self.settings, space,
                                            first_deploy=not any(apps.values()), service_exists=bool(service))
        except (PreflightError, CfApiError) as exc:
            checks.append(Check("CF API", False, str(exc)))
        try:
            upstream_password(self.settings)
            checks.append(Check("upstream credentials", True,
                                "configured" if self.settings.upstream.username else "anonymous (lower rate limit)"))
        except Exception as exc:  # noqa: BLE001
            checks.append(Check("upstream credentials", False, str(exc)))
        if self.settings.registry.image_pull_password_env:
            try:
                self._image_pull_password()
                checks.append(Check("registry image pull credentials", True,
                                    f"{self.settings.registry.image_pull_username}, password from the environment"))
            except RunbookError as exc:
                checks.append(Check("registry image pull credentials", False, str(exc)))
        checks.extend(self._image_checks())
        return PreflightReport(checks)

    def _image_pull_password(self) -> Secret:
        name = self.settings.registry.image_pull_password_env
        assert name is not None
        return secret_from_env(name, purpose=f"password of {self.settings.registry.image_pull_username} for "
                                             "pulling the registry image")

    def _image_checks(self) -> list[Check]:
        # The registry panics at start when it cannot reach its upstream (distribution #4038), and a
        # digest that does not resolve would fail the build: check both from here first.
        from ...image_refs import resolve_digest

        image = self.settings.registry.image or ""
        try:
            found = resolve_digest(self.settings.upstream.url, image)
            return [Check("upstream reachable", True, self.settings.upstream.url),
                    Check("registry image digest resolves", found, image if found else f"{image} not found")]
        except Exception as exc:  # noqa: BLE001 - an unreachable upstream is a failed check
            return [Check("upstream reachable", False, f"{self.settings.upstream.url}: {exc}")]

    # ------------------------------------------------------------------ deploy

    def deploy(self, *, dry_run: bool = False, component: str = "all") -> DeployReport:
        report = DeployReport(platform="cloudfoundry", dry_run=dry_run, endpoint=self.endpoint)
        steps = StepRecorder(report)
        self.session.dry_run = dry_run
        components: list[Component] = ["registry", "proxy"] if component == "all" else [component]  # type: ignore[list-item]
        try:
            key = self._ensure_s3(steps) if "registry" in components else None
            manifests = render_cf_manifests(self.settings, self.rules,
                                            s3=key.location if key else S3Location("<planned>", "<planned>"))
            for comp in components:
                self._deploy_app(steps, comp, manifests, key)
            # Looked up once, after the deploys: both steps need both apps as they are now.
            mirror, proxy = self._app("registry"), self._app("proxy")
            self._ensure_network_policy(steps, mirror, proxy)
            self._verify_routes(steps, mirror, proxy)
        except Exception as exc:
            report.error = str(exc)
            ids = ", ".join(sorted({c.request_id for c in self.session.failed_calls() if c.request_id}))
            raise DeployError(f"{exc}" + (f" [CF request ids: {ids}]" if ids and ids not in str(exc) else "")) \
                from exc
        return report

    def _deploy_app(self, steps: StepRecorder, component: Component, manifests: Any, key: S3Key | None) -> None:
        name = self._app_name(component)
        manifest = manifests.mirror if component == "registry" else manifests.proxy
        app = self._app(component)
        secret_env = self._secret_env(key, app) if component == "registry" else {}
        fingerprint = self._digest(component, manifest, manifests.proxy_nginx_conf, secret_env)
        if app is not None and app["state"] == "STARTED" and _annotation(app) == fingerprint:
            # Same inputs: unchanged only if the instances serve now, through a settle window (a
            # crash-looping app shows RUNNING between crashes).
            settle = self.cf.health_settle_seconds
            try:
                health = wait_serving(self.session, app, timeout=2 * settle + self.poll_interval, settle=settle,
                                      interval=self.poll_interval, clock=self.session.clock)
                steps.unchanged(name, "deploy", f"fingerprint {fingerprint} deployed; {health.summary()}")
                return
            except InstancesUnhealthy as exc:
                steps.unchanged(name, "inputs unchanged", f"but not serving ({exc}): deploying again")
        space = self._space()
        steps.run(name, "apply manifest", lambda: self._apply_manifest(space["guid"], manifest))
        app = self._app(component) or {"guid": "<new app>", "name": name, "state": "STOPPED"}
        legacy = not app["guid"].startswith("<") and LEGACY_DIGEST_VAR in self._env(app)
        env_changes = {**secret_env, **({LEGACY_DIGEST_VAR: None} if legacy else {})}
        if env_changes:
            steps.run(name, "set secrets in app environment", lambda: self._patch_env(app, env_changes),
                      detail=f"{len(secret_env)} variables (values hidden)")
        previous = self._current_droplet(app)
        package = self._package(steps, component, app, manifests.proxy_nginx_conf)
        droplet = self._build(steps, component, app, package, previous)
        self._rolling_deployment(steps, component, app, droplet, previous)
        steps.run(name, "record fingerprint", lambda: self._annotate(app, fingerprint),
                  detail=f"annotation {FINGERPRINT}={fingerprint}")

    def _package(self, steps: StepRecorder, component: Component, app: dict, nginx_conf: str) -> dict:
        name = self._app_name(component)
        result: dict[str, Any] = {"guid": "<planned package>"}

        def docker() -> str:
            data: dict[str, Any] = {"image": self.settings.registry.image}
            if self.settings.registry.image_pull_username:
                # Diego pulls the image as this account, not from the shared anonymous allowance.
                data |= {"username": self.settings.registry.image_pull_username,
                         "password": self._image_pull_password().reveal()}
            resp = self.session.send("POST", "/v3/packages", json={
                "type": "docker", "data": data, "relationships": {"app": {"data": {"guid": app["guid"]}}}})
            result.update(resp.json() if resp is not None else {})
            pulled_as = f", pulled as {data['username']}" if "username" in data else ""
            return f"package {result['guid']} ({self.settings.registry.image}{pulled_as})"

        def bits() -> str:
            resp = self.session.send("POST", "/v3/packages", json={
                "type": "bits", "relationships": {"app": {"data": {"guid": app["guid"]}}}})
            assert resp is not None
            result.update(resp.json())
            self.session.send("POST", f"/v3/packages/{result['guid']}/upload",
                              files={"bits": ("app.zip", _proxy_bits(nginx_conf), "application/zip")})
            done = self._poll(f"/v3/packages/{result['guid']}", lambda p: p["state"] in ("READY", "FAILED"),
                              timeout=300, what=f"package {result['guid']}")
            if done["state"] == "FAILED":
                raise DeployError(f"{name}: package {result['guid']} FAILED: "
                                  f"{(done.get('data') or {}).get('error') or 'CF gave no reason'}")
            return f"package {result['guid']} (nginx.conf, allow-list inside)"

        steps.run(name, "create package", docker if component == "registry" else bits)
        return result

    def _build(self, steps: StepRecorder, component: Component, app: dict, package: dict,
               previous: str | None) -> dict:
        name = self._app_name(component)
        result: dict[str, Any] = {"guid": "<planned droplet>"}

        def build() -> str:
            resp = self.session.send("POST", "/v3/builds", json={"package": {"guid": package["guid"]}})
            assert resp is not None
            built = self._poll(f"/v3/builds/{resp.json()['guid']}", lambda b: b["state"] in ("STAGED", "FAILED"),
                               timeout=self.cf.deploy_timeout_seconds, what="build")
            if built["state"] == "FAILED":
                self._after_failure(component, app, None, previous, f"build failed: {built.get('error')}")
            result["guid"] = built["droplet"]["guid"]
            return f"droplet {result['guid']}"

        steps.run(name, "build", build)
        return result

    def _rolling_deployment(self, steps: StepRecorder, component: Component, app: dict, droplet: dict,
                            previous: str | None) -> None:
        name = self._app_name(component)

        def deploy() -> str:
            deployment = self._start_deployment(app, {"droplet": {"guid": droplet["guid"]}})
            try:
                done = self._wait_deployed(app, deployment)
                health = self._wait_serving(app, since=deployment["created_at"])
            except (TimeoutError, InstancesUnhealthy) as exc:
                active = deployment["guid"] if self._deployment_active(deployment["guid"]) else None
                self._after_failure(component, app, active, previous, str(exc))
                raise  # _after_failure always raises; this keeps type checkers and readers sure
            return (f"deployment {deployment['guid']} {done['status'].get('reason')}; "
                    f"{health.running}/{health.desired} instances RUNNING for {self.cf.health_settle_seconds:g} s")

        steps.run(name, "rolling deployment, then instance health", deploy)

    def _wait_deployed(self, app: dict, deployment: dict) -> dict:
        """Poll the deployment to FINALIZED/DEPLOYED; a crash of its new instances ends the wait early
        (CC itself waits on them forever)."""
        deadline = self.session.clock() + self.cf.deploy_timeout_seconds
        while True:
            current = self.session.get(f"/v3/deployments/{deployment['guid']}")
            status = current["status"]
            if status["value"] == "FINALIZED":
                if status.get("reason") != "DEPLOYED":
                    raise InstancesUnhealthy(f"deployment {deployment['guid']} ended {status.get('reason')}")
                return current
            reason = crash_reason(self.session, app, since=deployment["created_at"])
            if reason is not None:
                raise InstancesUnhealthy(f"{app['name']}: new instances crash: {reason}")
            if self.session.clock() >= deadline:
                raise TimeoutError(f"deployment {deployment['guid']} not finished after "
                                   f"{self.cf.deploy_timeout_seconds} s")
            self.session.sleep(self.poll_interval)

    def _wait_serving(self, app: dict, *, since: str | None = None) -> Any:
        return wait_serving(self.session, app, timeout=self.cf.deploy_timeout_seconds,
                            settle=self.cf.health_settle_seconds, interval=self.poll_interval,
                            clock=self.session.clock, since=since)

    def _deployment_active(self, guid: str) -> bool:
        return self.session.get(f"/v3/deployments/{guid}")["status"]["value"] == "ACTIVE"

    def _after_failure(self, component: Component, app: dict, deployment: str | None, previous: str | None,
                       what: str) -> None:
        """Apply the environment's failure policy, then raise."""
        name = self._app_name(component)
        if self.settings.on_failure == "stop":
            left = f"; deployment {deployment} left ACTIVE for debugging" if deployment else "; left as it is"
            raise DeployError(f"{name}: {what}{left} (on_failure: stop)")
        outcome = []
        if deployment is not None:
            self.session.send("POST", f"/v3/deployments/{deployment}/actions/cancel")
            self._wait_finalized(deployment, what=f"cancel of {deployment}")
            outcome.append(f"deployment {deployment} cancelled")
        elif previous is not None and self._current_droplet(app) != previous:
            # Already finalized (e.g. the app was stopped): deploy what served before, with today's env.
            again = self._start_deployment(app, {"droplet": {"guid": previous}})
            self._wait_finalized(again["guid"], what=f"redeploy of {previous}")
            outcome.append(f"previous droplet {previous} deployed again")
        if previous is None:
            # A first deploy has nothing to go back to; stopped, it does not crash-loop meanwhile.
            self.session.send("POST", f"/v3/apps/{app['guid']}/actions/stop")
            raise DeployError(f"{name}: {what}; first deploy, nothing to go back to: app stopped "
                              "(on_failure: cancel)")
        try:
            health = self._wait_serving(app)
        except (TimeoutError, InstancesUnhealthy) as exc:
            raise DeployError(f"{name}: {what}; {'; '.join(outcome) or 'nothing to cancel'}; previous droplet "
                              f"NOT serving ({exc}): check the app now (on_failure: cancel)") from None
        raise DeployError(f"{name}: {what}; {'; '.join(outcome) or 'nothing to cancel'}; previous droplet "
                          f"{previous} serves again ({health.running} instance(s) running) (on_failure: cancel)")

    # ------------------------------------------------------------------ rollback

    def rollback(self, *, component: Component, revision: str | None = None, dry_run: bool = False) -> DeployReport:
        """Cancel an active deployment; or deploy an earlier revision's droplet and configuration again,
        with today's credentials (the revision's own may be rotated away since)."""
        report = DeployReport(platform="cloudfoundry", dry_run=dry_run, endpoint=self.endpoint)
        steps = StepRecorder(report)
        self.session.dry_run = dry_run
        name = self._app_name(component)
        app = self._app(component)
        if app is None:
            raise DeployError(f"{name} does not exist in {self.cf.org}/{self.cf.space}: nothing to roll back")
        try:
            active = self._active_deployments(app["guid"])
            if active:
                guid = active[0]["guid"]

                def cancel() -> str:
                    self.session.send("POST", f"/v3/deployments/{guid}/actions/cancel")
                    done = self._wait_finalized(guid, what=f"cancel of {guid}")
                    return f"deployment {guid} {done['status'].get('reason')}"
                steps.run(name, "cancel active deployment", cancel, detail=f"POST /v3/deployments/{guid}/actions/cancel")
            else:
                target = self._rollback_revision(app, revision)
                then = self.session.get(f"/v3/revisions/{target['guid']}/environment_variables").get("var") or {}
                now = self._env(app)
                env = {k: v for k, v in then.items() if k not in CREDENTIAL_VARS and k != LEGACY_DIGEST_VAR}
                env |= {k: v for k, v in now.items() if k in CREDENTIAL_VARS}
                changes: dict[str, str | None] = {**env, **{k: None for k in now if k not in env}}
                steps.run(name, f"configuration of revision {target['version']}, today's credentials",
                          lambda: self._patch_env(app, changes),
                          detail=f"{len(env)} variables, {len(CREDENTIAL_VARS & set(env))} credentials kept")
                # Whatever the fingerprint said no longer runs: the next deploy must apply the params.
                steps.run(name, "forget fingerprint", lambda: self._annotate(app, None))

                def redeploy() -> str:
                    deployment = self._start_deployment(app, {"droplet": {"guid": target["droplet"]["guid"]}})
                    done = self._wait_deployed(app, deployment)
                    return f"droplet of revision {target['version']} deployed again by {done['guid']}"
                steps.run(name, f"deploy the droplet of revision {target['version']}", redeploy,
                          detail=f"POST /v3/deployments {{droplet: {target['droplet']['guid']}}}")
            if not dry_run:
                steps.run(name, "verify", lambda: self._verify_serving(app))
        except Exception as exc:
            report.error = str(exc)
            raise
        return report

    def scale(self, *, component: Component, instances: int, dry_run: bool = False) -> DeployReport:
        """Scale the app's web process in place (an incident's extra capacity) and wait until every
        instance serves. The params file still says what the next deploy brings back."""
        report = DeployReport(platform="cloudfoundry", dry_run=dry_run, endpoint=self.endpoint)
        steps = StepRecorder(report)
        self.session.dry_run = dry_run
        app = self._app(component)
        if app is None:
            raise DeployError(f"{self._app_name(component)} does not exist in {self.cf.org}/{self.cf.space}")
        process = self._web_process(app)

        def scale() -> str:
            self.session.send("POST", f"/v3/processes/{process}/actions/scale", json={"instances": instances})
            return self._verify_serving(app)
        steps.run(app["name"], f"scale to {instances} instance(s)", scale,
                  detail=f"POST /v3/processes/{process}/actions/scale")
        return report

    def _rollback_revision(self, app: dict, wanted: str | None) -> dict:
        revisions = sorted(self.session.list_all(f"/v3/apps/{app['guid']}/revisions"), key=lambda r: r["version"])
        if wanted:
            for rev in revisions:
                if rev["guid"] == wanted or str(rev["version"]) == wanted:
                    return rev
            raise DeployError(f"revision {wanted} is not a revision of {app['name']}")
        deployed = self.session.list_all(f"/v3/apps/{app['guid']}/revisions/deployed")
        current = max((r["version"] for r in deployed), default=None)
        older = [r for r in revisions if current is not None and r["version"] < current and r.get("deployable", True)]
        if not older:
            raise DeployError(f"{app['name']} has no earlier deployable revision to roll back to")
        return older[-1]

    # ------------------------------------------------------------------ status

    def status(self) -> pd.DataFrame:
        rows = []
        for component in ("registry", "proxy"):
            app = self._app(component)  # type: ignore[arg-type]
            if app is None:
                rows.append({"component": self._app_name(component), "state": "absent"})
                continue
            deployments = self.session.list_all("/v3/deployments", {"app_guids": app["guid"]})
            last = deployments[-1]["status"] if deployments else {}
            rows.append({"component": app["name"], "state": app["state"],
                         "running": self._running_instances(app), "droplet": self._current_droplet(app),
                         "last deployment": f"{last.get('value', '-')}/{last.get('reason', '-')}",
                         "routes": ", ".join(r["url"] for r in self.session.list_all(f"/v3/apps/{app['guid']}/routes"))})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ read-only views for checks

    def app_named(self, component: Component) -> dict | None:
        return self._app(component)

    def app_env(self, app: dict) -> dict[str, str]:
        """The app's environment variables; callers compare names and non-secret values only."""
        return self._env(app)

    def route_urls(self, app: dict) -> list[str]:
        return [r["url"] for r in self.session.list_all(f"/v3/apps/{app['guid']}/routes")]

    def policies_for(self, app: dict) -> list[dict]:
        return self.session.get("/networking/v1/external/policies", {"id": app["guid"]}).get("policies") or []

    def droplet_image(self, app: dict) -> str | None:
        try:
            return self.session.get(f"/v3/apps/{app['guid']}/droplets/current").get("image")
        except CfApiError as exc:
            if exc.status == 404:
                return None
            raise

    def current_package_bits(self, app: dict) -> bytes | None:
        """The zip the app's current droplet was staged from; None without a droplet or for a docker app."""
        try:
            droplet = self.session.get(f"/v3/apps/{app['guid']}/droplets/current")
        except CfApiError as exc:
            if exc.status == 404:
                return None
            raise
        package = (droplet.get("links") or {}).get("package")
        if droplet.get("lifecycle", {}).get("type") == "docker" or not package:
            return None
        return self.session.download(urlsplit(package["href"]).path + "/download")

    def web_process(self, app: dict) -> dict:
        return self.session.get(f"/v3/apps/{app['guid']}/processes/web")

    def down(self, *, dry_run: bool = False) -> DeployReport:
        raise DeployError("teardown is for the local platform; on Cloud Foundry use `cf stop` deliberately")

    # ------------------------------------------------------------------ pieces

    def _ensure_s3(self, steps: StepRecorder) -> S3Key | None:
        space = self._space()
        instances = self.session.list_all("/v3/service_instances", {
            "names": self.cf.s3_service_instance, "space_guids": space["guid"]})
        if instances:
            steps.unchanged("s3", f"service {self.cf.s3_service_instance}", "exists")
            instance = instances[0]
        else:
            def create() -> str:
                plans = self.session.list_all("/v3/service_plans", {
                    "names": self.cf.s3_service_plan, "service_offering_names": "s3"})
                if not plans:
                    raise DeployError(f"service plan s3/{self.cf.s3_service_plan} is not offered here")
                resp = self.session.send("POST", "/v3/service_instances", json={
                    "type": "managed", "name": self.cf.s3_service_instance,
                    "relationships": {"space": {"data": {"guid": space["guid"]}},
                                      "service_plan": {"data": {"guid": plans[0]["guid"]}}}})
                assert resp is not None
                self._wait_job(resp)
                return f"s3 {self.cf.s3_service_plan} created"
            steps.run("s3", f"create service {self.cf.s3_service_instance}", create)
            if steps.dry_run:
                return None
            instance = self.session.list_all("/v3/service_instances", {
                "names": self.cf.s3_service_instance, "space_guids": space["guid"]})[0]
        keys = self.session.list_all("/v3/service_credential_bindings", {
            "type": "key", "service_instance_guids": instance["guid"], "names": self.cf.s3_service_key})
        if keys:
            steps.unchanged("s3", f"service key {self.cf.s3_service_key}", "exists")
        else:
            def create_key() -> str:
                resp = self.session.send("POST", "/v3/service_credential_bindings", json={
                    "type": "key", "name": self.cf.s3_service_key,
                    "relationships": {"service_instance": {"data": {"guid": instance["guid"]}}}})
                assert resp is not None
                self._wait_job(resp)
                return "created"
            steps.run("s3", f"create service key {self.cf.s3_service_key}", create_key)
            if steps.dry_run:
                return None
            keys = self.session.list_all("/v3/service_credential_bindings", {
                "type": "key", "service_instance_guids": instance["guid"], "names": self.cf.s3_service_key})
        creds = self.session.get(f"/v3/service_credential_bindings/{keys[0]['guid']}/details")["credentials"]
        return S3Key(S3Location(bucket=creds["bucket"], region=creds["region"]),
                     Secret("S3 access key", creds["access_key_id"]), Secret("S3 secret key", creds["secret_access_key"]))

    def _secret_env(self, key: S3Key | None, app: dict | None) -> dict[str, str]:
        if key is None:
            return {}
        env = {"REGISTRY_STORAGE_S3_ACCESSKEY": key.access_key.reveal(),
               "REGISTRY_STORAGE_S3_SECRETKEY": key.secret_key.reveal()}
        password = upstream_password(self.settings)
        if password is not None:
            env["REGISTRY_PROXY_PASSWORD"] = password.reveal()
        # Signs upload state: every instance must hold the same one, and a new one on every deploy
        # would make every deploy a change. Kept once made.
        current = self._env(app).get("REGISTRY_HTTP_SECRET") if app is not None else None
        env["REGISTRY_HTTP_SECRET"] = current or _random.token_urlsafe(30)
        return env

    def _digest(self, component: Component, manifest: str, nginx_conf: str, secret_env: dict[str, str]) -> str:
        material = [component, manifest, self.settings.registry.image or ""]
        if component == "proxy":
            material.append(nginx_conf)
        # Hashes of secrets, so rotating a key redeploys; the values never leave this process.
        material += [hashlib.sha256(f"{k}={v}".encode()).hexdigest() for k, v in sorted(secret_env.items())]
        return hashlib.sha256("\n".join(material).encode()).hexdigest()[:20]

    def _patch_env(self, app: dict, variables: dict[str, str | None]) -> str:
        self.session.send("PATCH", f"/v3/apps/{app['guid']}/environment_variables", json={"var": variables})
        return f"{sum(v is not None for v in variables.values())} variable(s) set"

    def _annotate(self, app: dict, fingerprint: str | None) -> str:
        self.session.send("PATCH", f"/v3/apps/{app['guid']}", json={"metadata": {"annotations": {
            FINGERPRINT: fingerprint}}})
        return "recorded" if fingerprint else "removed"

    def _apply_manifest(self, space_guid: str, manifest: str) -> str:
        resp = self.session.send("POST", f"/v3/spaces/{space_guid}/actions/apply_manifest",
                                 data=manifest.encode(), headers={"Content-Type": "application/x-yaml"})
        if resp is None:
            return "planned"
        self._wait_job(resp)
        return "manifest applied"

    def _wait_job(self, resp: Any) -> dict:
        location = resp.headers.get("Location", "")
        path = "/v3/jobs/" + location.rstrip("/").rsplit("/", 1)[-1]
        job = self._poll(path, lambda j: j["state"] in ("COMPLETE", "FAILED"), timeout=300, what=f"job {path}")
        if job["state"] == "FAILED":
            detail = "; ".join(e.get("detail", "") for e in job.get("errors", []))
            raise DeployError(f"job {job['guid']} ({job.get('operation')}) failed: {detail}")
        return job

    def _ensure_network_policy(self, steps: StepRecorder, mirror: dict | None, proxy: dict | None) -> None:
        if mirror is None or proxy is None:
            if steps.dry_run:
                steps.run("network", "policy proxy -> mirror tcp 5000", lambda: None, detail="after both apps exist")
            return
        policies = self.session.get("/networking/v1/external/policies",
                                    {"id": f"{proxy['guid']},{mirror['guid']}"}).get("policies") or []
        wanted = {"source": {"id": proxy["guid"]},
                  "destination": {"id": mirror["guid"], "protocol": "tcp", "ports": {"start": MIRROR_PORT, "end": MIRROR_PORT}}}
        if any(_same_policy(p, wanted) for p in policies):
            steps.unchanged("network", "policy proxy -> mirror tcp 5000", "exists")
            return
        # Raw POST: the client library's create() raises on the API's empty answer (FACTS 6).
        steps.run("network", "policy proxy -> mirror tcp 5000",
                  lambda: self.session.send("POST", "/networking/v1/external/policies", json={"policies": [wanted]})
                  and "created")

    def _verify_routes(self, steps: StepRecorder, mirror: dict | None, proxy: dict | None) -> None:
        if steps.dry_run:
            return

        def check() -> str:
            problems = []
            if mirror is not None:
                urls = [r["url"] for r in self.session.list_all(f"/v3/apps/{mirror['guid']}/routes")]
                public = [u for u in urls if not u.split("/")[0].endswith(".apps.internal")]
                if public:
                    problems.append(f"mirror has public route(s) {public}")
                if self.cf.mirror_route not in urls:
                    problems.append(f"mirror lacks {self.cf.mirror_route}")
            if proxy is not None:
                urls = [r["url"] for r in self.session.list_all(f"/v3/apps/{proxy['guid']}/routes")]
                if self.cf.proxy_route not in urls:
                    problems.append(f"proxy lacks {self.cf.proxy_route}")
            if problems:
                raise DeployError("routes wrong: " + "; ".join(problems))
            return Unchanged("mirror only on apps.internal; proxy on its public route")
        steps.run("routes", "verify", check)

    def _verify_serving(self, app: dict) -> str:
        health = self._wait_serving(app)
        return (f"droplet {self._current_droplet(app)} serves: {health.running}/{health.desired} instance(s) "
                f"RUNNING for {self.cf.health_settle_seconds:g} s")

    def _start_deployment(self, app: dict, source: dict) -> dict:
        """A rolling deployment of a droplet; `options` only where CC knows it (preflight said so)."""
        body: dict[str, Any] = {**source, "strategy": "rolling",
                                "relationships": {"app": {"data": {"guid": app["guid"]}}}}
        if capabilities(self.session).max_in_flight:
            body["options"] = {"max_in_flight": self.cf.max_in_flight}
        resp = self.session.send("POST", "/v3/deployments", json=body)
        assert resp is not None  # only called from steps, which a dry run never runs
        return resp.json()

    def _wait_finalized(self, guid: str, *, what: str) -> dict:
        return self._poll(f"/v3/deployments/{guid}", lambda d: d["status"]["value"] == "FINALIZED",
                          timeout=self.cf.deploy_timeout_seconds, what=what)

    def _poll(self, path: str, done: Callable[[dict], bool], *, timeout: float, what: str) -> dict:
        deadline = self.session.clock() + timeout
        while True:
            body = self.session.get(path)
            if done(body):
                return body
            if self.session.clock() >= deadline:
                raise TimeoutError(f"{what} not finished after {timeout:.0f} s")
            self.session.sleep(self.poll_interval)

    def _space(self, *, required: bool = True) -> dict | None:
        if self._space_guid is not None:
            return {"guid": self._space_guid}
        orgs = self.session.list_all("/v3/organizations", {"names": self.cf.org})
        spaces = self.session.list_all("/v3/spaces", {"names": self.cf.space, "organization_guids": orgs[0]["guid"]}) \
            if orgs else []
        if not spaces:
            if required:
                raise DeployError(f"space {self.cf.org}/{self.cf.space} not found")
            return None
        self._space_guid = spaces[0]["guid"]
        return spaces[0]

    def _app_name(self, component: str) -> str:
        return self.cf.mirror_app if component == "registry" else self.cf.proxy_app

    def _app(self, component: Component) -> dict | None:
        space = self._space()
        assert space is not None
        apps = self.session.list_all("/v3/apps", {"names": self._app_name(component), "space_guids": space["guid"]})
        return apps[0] if apps else None

    def _env(self, app: dict) -> dict[str, str]:
        return self.session.get(f"/v3/apps/{app['guid']}/environment_variables").get("var") or {}

    def _current_droplet(self, app: dict) -> str | None:
        if app["guid"].startswith("<"):
            return None
        try:
            return self.session.get(f"/v3/apps/{app['guid']}/droplets/current")["guid"]
        except CfApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _running_instances(self, app: dict) -> int:
        stats = self.session.get(f"/v3/processes/{self._web_process(app)}/stats").get("resources") or []
        return sum(1 for s in stats if s.get("state") == "RUNNING")

    def _web_process(self, app: dict) -> str:
        return self.session.get(f"/v3/apps/{app['guid']}/processes/web")["guid"]

    def _active_deployments(self, app_guid: str) -> list[dict]:
        return self.session.list_all("/v3/deployments", {"app_guids": app_guid, "status_values": "ACTIVE"})


def _annotation(app: dict) -> str | None:
    return ((app.get("metadata") or {}).get("annotations") or {}).get(FINGERPRINT)


def _same_policy(policy: dict, wanted: dict) -> bool:
    dest, want = policy.get("destination", {}), wanted["destination"]
    return (policy.get("source", {}).get("id") == wanted["source"]["id"] and dest.get("id") == want["id"]
            and dest.get("protocol") == "tcp" and dest.get("ports", {}).get("start", dest.get("port")) <= MIRROR_PORT
            <= dest.get("ports", {}).get("end", dest.get("port")))


def _proxy_bits(nginx_conf: str) -> bytes:
    """The proxy app as the nginx buildpack wants it: nginx.conf and mime.types at the root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("nginx.conf", nginx_conf)
        zf.writestr("mime.types", "types {\n    application/octet-stream bin;\n    application/json json;\n}\n")
        zf.writestr("buildpack.yml", "nginx:\n  version: stable\n")
    return buffer.getvalue()
