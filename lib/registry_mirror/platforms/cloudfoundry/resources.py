"""Every Cloud Foundry resource the runbooks read or write, one method each, over one session.

As the cf CLI keeps its actor (`actor/v7action/<resource>.go`) apart from its transport (`ccv3`),
the push steps, rollback, health, checks and triage evidence ask this module for apps, droplets,
process stats, crash events, deployments and so on, and never write a `/v3/...` path themselves.
That keeps each rule of the API in one place: a missing current droplet is CC's 404 and means
"none" here only; stats, crash events and active deployments are read the same way everywhere.

Creates and uploads are not idempotent: after no answer or a 5xx (OutcomeUnknown) each looks up
whether its first attempt took effect (the package, build, deployment, service instance or key it
would have made) and sends the call again only when it did not.

Resources are CC's JSON objects as it sends them (`Resource`). Mutating methods go through the
session's `send`, so a dry run records them as planned and they return None.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from .session import JOB_TIMEOUT_SECONDS, CfApiError, CfSession, OutcomeUnknown
from ...credentials import Secret
from ...errors import DeployError

Resource = dict[str, Any]
T = TypeVar("T")
CRASH_EVENT = "audit.app.process.crash"
INTERNAL_DOMAIN = "apps.internal"
POLICIES = "/networking/v1/external/policies"


class CloudController:
    """CC v3 and the policy server, by resource. Reads raise CfApiError except where "none" is a
    normal answer (an app, a droplet, a service that does not exist yet), which they return as None."""

    def __init__(self, session: CfSession) -> None:
        self.session = session

    # ------------------------------------------------------------------ organizations and spaces

    def organization(self, name: str) -> Resource | None:
        return _first(self.session.list_all("/v3/organizations", {"names": name}))

    def space(self, org: str, name: str) -> Resource | None:
        found = self.organization(org)
        if found is None:
            return None
        return _first(self.session.list_all("/v3/spaces", {"names": name, "organization_guids": found["guid"]}))

    def organization_quota(self, org: Resource) -> Resource:
        """The `apps` limits of the org's quota (total_memory_in_mb, total_instances; None is unlimited)."""
        return self.session.get(f"/v3/organization_quotas/{org['relationships']['quota']['data']['guid']}")["apps"]

    def organization_usage(self, org: Resource) -> Resource:
        return self.session.get(f"/v3/organizations/{org['guid']}/usage_summary")["usage_summary"]

    def space_developer_roles(self, user_guid: str, space: Resource) -> list[Resource]:
        return self.session.list_all("/v3/roles", {"user_guids": user_guid, "space_guids": space["guid"],
                                                   "types": "space_developer"})

    def feature_flag(self, name: str) -> bool:
        return bool(self.session.get(f"/v3/feature_flags/{name}").get("enabled"))

    def internal_domain(self) -> Resource | None:
        """The foundation's apps.internal domain when it is internal (container-to-container only)."""
        domain = _first(self.session.list_all("/v3/domains", {"names": INTERNAL_DOMAIN}))
        return domain if domain is not None and domain.get("internal") else None

    # ------------------------------------------------------------------ manifests

    def apply_manifest(self, space_guid: str, manifest: str) -> Resource | None:
        """Apply a space manifest and wait for its job; None in a dry run."""
        resp = self.session.send("POST", f"/v3/spaces/{space_guid}/actions/apply_manifest", data=manifest.encode(),
                                 headers={"Content-Type": "application/x-yaml"})
        return None if resp is None else self.session.wait_job(resp)

    # ------------------------------------------------------------------ apps

    def app(self, space_guid: str, name: str) -> Resource | None:
        return _first(self.session.list_all("/v3/apps", {"names": name, "space_guids": space_guid}))

    def app_env(self, app: Resource) -> dict[str, str]:
        """The app's own environment variables (values include secrets: callers show names only)."""
        return self.session.get(f"/v3/apps/{app['guid']}/environment_variables").get("var") or {}

    def update_app_env(self, app: Resource, variables: dict[str, str | None]) -> None:
        """Set these variables; None removes one. Other variables stay."""
        self.session.send("PATCH", f"/v3/apps/{app['guid']}/environment_variables", json={"var": variables})

    def annotate(self, app: Resource, key: str, value: str | None) -> None:
        """Set (None: remove) one annotation; metadata makes no revision."""
        self.session.send("PATCH", f"/v3/apps/{app['guid']}", json={"metadata": {"annotations": {key: value}}})

    def stop_app(self, app: Resource) -> None:
        self.session.send("POST", f"/v3/apps/{app['guid']}/actions/stop")

    def route_urls(self, app: Resource) -> list[str]:
        return [r["url"] for r in self.session.list_all(f"/v3/apps/{app['guid']}/routes")]

    # ------------------------------------------------------------------ droplets and packages

    def current_droplet(self, app: Resource) -> Resource | None:
        """The droplet the app runs; None when it has none yet (CC's 404), or for an app a dry run only plans."""
        if app["guid"].startswith("<"):
            return None
        try:
            return self.session.get(f"/v3/apps/{app['guid']}/droplets/current")
        except CfApiError as exc:
            if exc.status == 404:
                return None
            raise

    def current_package_bits(self, app: Resource) -> bytes | None:
        """The zip the app's current droplet was staged from; None without a droplet or for a docker app."""
        droplet = self.current_droplet(app)
        if droplet is None or droplet.get("lifecycle", {}).get("type") == "docker":
            return None
        package = (droplet.get("links") or {}).get("package")
        if not package:
            return None
        return self.session.download(urlsplit(package["href"]).path + "/download")

    def create_docker_package(self, app: Resource, image: str, *, username: str | None = None,
                              password: Secret | None = None) -> Resource | None:
        data: dict[str, Any] = {"image": image}
        if username:
            data |= {"username": username, "password": password.reveal() if password else ""}
        return self._create_package(app, {"type": "docker", "data": data,
                                          "relationships": {"app": {"data": {"guid": app["guid"]}}}})

    def create_bits_package(self, app: Resource) -> Resource | None:
        return self._create_package(app, {"type": "bits", "relationships": {"app": {"data": {"guid": app["guid"]}}}})

    def _create_package(self, app: Resource, body: dict[str, Any]) -> Resource | None:
        if self.session.dry_run:
            return _json(self.session.send("POST", "/v3/packages", json=body))
        known = {p["guid"] for p in self.packages(app)}

        def made() -> Resource | None:
            return _first([p for p in self.packages(app) if p["guid"] not in known and p["type"] == body["type"]])
        return self._once(lambda: _json(self.session.send("POST", "/v3/packages", json=body, idempotent=False)), made)

    def packages(self, app: Resource) -> list[Resource]:
        """The app's packages, newest first."""
        return self.session.list_all("/v3/packages", {"app_guids": app["guid"], "order_by": "-created_at"})

    def upload_bits(self, package: Resource, zipped: bytes) -> None:
        def uploaded() -> Resource | None:
            current = self.package(package["guid"])
            return current if current["state"] != "AWAITING_UPLOAD" else None
        self._once(lambda: self.session.send("POST", f"/v3/packages/{package['guid']}/upload", idempotent=False,
                                             files={"bits": ("app.zip", zipped, "application/zip")}), uploaded)

    def package(self, guid: str) -> Resource:
        return self.session.get(f"/v3/packages/{guid}")

    # ------------------------------------------------------------------ builds

    def create_build(self, package: Resource) -> Resource | None:
        return self._once(lambda: _json(self.session.send("POST", "/v3/builds", json={"package": {"guid": package["guid"]}},
                                                          idempotent=False)),
                          lambda: _first(self.session.list_all("/v3/builds", {"package_guids": package["guid"]})))

    def build(self, guid: str) -> Resource:
        return self.session.get(f"/v3/builds/{guid}")

    # ------------------------------------------------------------------ processes

    def web_process(self, app: Resource) -> Resource:
        """The app's web process: during a rolling deployment, the one the deployment brings up."""
        return self.session.get(f"/v3/apps/{app['guid']}/processes/web")

    def process(self, guid: str) -> Resource:
        return self.session.get(f"/v3/processes/{guid}")

    def process_stats(self, process: Resource) -> list[Resource]:
        """One entry per instance: index, state (RUNNING, STARTING, CRASHED, DOWN), uptime, details."""
        return self.session.get(f"/v3/processes/{process['guid']}/stats").get("resources") or []

    def scale(self, process: Resource, instances: int) -> None:
        self.session.send("POST", f"/v3/processes/{process['guid']}/actions/scale", json={"instances": instances})

    # ------------------------------------------------------------------ audit events

    def crash_events(self, app: Resource, *, limit: int) -> list[Resource]:
        """The app's newest `limit` instance crashes, newest first, as Diego reported them (data: index,
        exit_description, reason, version of the process)."""
        return self.session.get("/v3/audit_events", {"types": CRASH_EVENT, "target_guids": app["guid"],
                                                     "order_by": "-created_at", "per_page": str(limit)}
                                ).get("resources") or []

    # ------------------------------------------------------------------ deployments

    def deployments(self, app: Resource) -> list[Resource]:
        """Every deployment of the app, oldest first."""
        return self.session.list_all("/v3/deployments", {"app_guids": app["guid"]})

    def active_deployments(self, app: Resource) -> list[Resource]:
        return self.session.list_all("/v3/deployments", {"app_guids": app["guid"], "status_values": "ACTIVE"})

    def deployment(self, guid: str) -> Resource:
        return self.session.get(f"/v3/deployments/{guid}")

    def create_deployment(self, app: Resource, *, droplet_guid: str, max_in_flight: int | None,
                          web_instances: int | None = None) -> Resource | None:
        """A rolling deployment of a droplet; `options` only when CC knows them (None: leave them out).
        `web_instances`: how many instances the new process ends with, as `cf push` sends the
        manifest's instances on the rolling path (the old process is never scaled meanwhile)."""
        body: dict[str, Any] = {"droplet": {"guid": droplet_guid}, "strategy": "rolling",
                                "relationships": {"app": {"data": {"guid": app["guid"]}}}}
        options = {k: v for k, v in (("max_in_flight", max_in_flight), ("web_instances", web_instances))
                   if v is not None}
        if options:
            body["options"] = options
        if self.session.dry_run:
            return _json(self.session.send("POST", "/v3/deployments", json=body))
        known = {d["guid"] for d in self.deployments(app)}

        def made() -> Resource | None:
            return _first([d for d in self.deployments(app)[::-1]
                           if d["guid"] not in known and d["droplet"]["guid"] == droplet_guid])
        return self._once(lambda: _json(self.session.send("POST", "/v3/deployments", json=body, idempotent=False)),
                          made)

    def cancel_deployment(self, guid: str) -> None:
        def cancelled() -> Resource | None:
            current = self.deployment(guid)
            return current if current["status"]["reason"] in ("CANCELING", "CANCELED") else None
        self._once(lambda: self.session.send("POST", f"/v3/deployments/{guid}/actions/cancel", idempotent=False),
                   cancelled)

    # ------------------------------------------------------------------ revisions

    def revisions(self, app: Resource) -> list[Resource]:
        """Every revision of the app, by version."""
        return sorted(self.session.list_all(f"/v3/apps/{app['guid']}/revisions"), key=lambda r: r["version"])

    def deployed_revisions(self, app: Resource) -> list[Resource]:
        return self.session.list_all(f"/v3/apps/{app['guid']}/revisions/deployed")

    def revision_env(self, revision: Resource) -> dict[str, str]:
        return self.session.get(f"/v3/revisions/{revision['guid']}/environment_variables").get("var") or {}

    # ------------------------------------------------------------------ services

    def service_instance(self, space_guid: str, name: str) -> Resource | None:
        return _first(self.session.list_all("/v3/service_instances", {"names": name, "space_guids": space_guid}))

    def service_plan(self, offering: str, name: str) -> Resource | None:
        return _first(self.session.list_all("/v3/service_plans", {"names": name, "service_offering_names": offering}))

    def create_service_instance(self, space_guid: str, name: str, plan: Resource) -> None:
        """Create a managed instance and wait for the broker (a job, or after a lost answer the instance's
        last operation)."""
        body = {"type": "managed", "name": name, "relationships": {"space": {"data": {"guid": space_guid}},
                                                                   "service_plan": {"data": {"guid": plan["guid"]}}}}
        resp = self._once(lambda: self.session.send("POST", "/v3/service_instances", json=body, idempotent=False),
                          lambda: self.service_instance(space_guid, name))
        if isinstance(resp, requests.Response):
            self.session.wait_job(resp)
        elif resp is not None:
            self._wait_operation(f"/v3/service_instances/{resp['guid']}", f"service instance {name}")

    def service_key(self, instance: Resource, name: str) -> Resource | None:
        return _first(self.session.list_all("/v3/service_credential_bindings", {
            "type": "key", "service_instance_guids": instance["guid"], "names": name}))

    def create_service_key(self, instance: Resource, name: str) -> None:
        body = {"type": "key", "name": name,
                "relationships": {"service_instance": {"data": {"guid": instance["guid"]}}}}
        resp = self._once(lambda: self.session.send("POST", "/v3/service_credential_bindings", json=body,
                                                    idempotent=False),
                          lambda: self.service_key(instance, name))
        if isinstance(resp, requests.Response):
            self.session.wait_job(resp)
        elif resp is not None:
            self._wait_operation(f"/v3/service_credential_bindings/{resp['guid']}", f"service key {name}")

    def _wait_operation(self, path: str, what: str) -> None:
        """Poll a service resource until its last operation ends; DeployError when it failed."""
        done = self.session.poll(lambda: self.session.get(path),
                                 lambda r: (r.get("last_operation") or {}).get("state") != "in progress",
                                 timeout=JOB_TIMEOUT_SECONDS, what=what)
        operation = done.get("last_operation") or {}
        if operation.get("state") != "succeeded":
            raise DeployError(f"{what}: {operation.get('type')} {operation.get('state')}: "
                              f"{operation.get('description') or 'the broker gave no reason'}")

    def _once(self, send: Callable[[], T], made: Callable[[], Resource | None]) -> T | Resource | None:
        """Send a non-idempotent call; when its outcome is unknown, what it made if it took effect (looked
        up by `made`), else one more attempt."""
        try:
            return send()
        except OutcomeUnknown:
            found = made()
            return found if found is not None else send()

    def service_key_credentials(self, key: Resource) -> dict[str, Any]:
        """The key's credentials: secrets, to be wrapped in `Secret` by the caller at once."""
        return self.session.get(f"/v3/service_credential_bindings/{key['guid']}/details")["credentials"]

    # ------------------------------------------------------------------ network policies

    def policies(self, *apps: Resource | str) -> list[Resource]:
        """Policies whose source or destination is one of these apps (guids pass as they are)."""
        ids = ",".join(a if isinstance(a, str) else a["guid"] for a in apps)
        return self.session.get(POLICIES, {"id": ids}).get("policies") or []

    def create_policy(self, source: Resource, destination: Resource, *, port: int) -> None:
        # A raw POST: the community client's create() raises on the policy server's empty answer.
        self.session.send("POST", POLICIES, json={"policies": [{
            "source": {"id": source["guid"]},
            "destination": {"id": destination["guid"], "protocol": "tcp", "ports": {"start": port, "end": port}}}]})


def _first(resources: list[Resource]) -> Resource | None:
    return resources[0] if resources else None


def _json(resp: requests.Response | None) -> Resource | None:
    return None if resp is None else resp.json()
