"""Triage evidence on Cloud Foundry, through the CC API: process stats (instance states, uptime),
crash audit events (Diego's exit description), deployments (how long one has been ACTIVE), the
network policy proxy -> mirror, and the public route from this machine.

The S3 store is a brokered service that only the mirror reaches with its binding's key: its state
shows in the mirror's crash reasons (a wrong key panics the registry at start), not from here.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import requests

from .health import crash_reason
from .network import allows_proxy_to_mirror
from .resources import Resource
from .space import APPS, Component, Space
from ...incidents.triage import Facts, Finding
from ...incidents.upstream_probe import PROBE_TIMEOUT, clip, upstream_findings
from ...rendering import MIRROR_PORT


class CloudFoundryEvidence:
    """One walk's evidence; `public_url` is how this machine reaches the proxy's public route."""

    def __init__(self, space: Space, *, public_url: str, probe_image: str = "library/hello:latest",
                 recent_minutes: float = 15, stuck_minutes: float = 10) -> None:
        self.space, self.cc = space, space.cc
        self.public_url = public_url.rstrip("/")
        repository, _, tag = probe_image.removeprefix("docker.io/").partition(":")
        self.repository, self.tag = repository, tag or "latest"
        self.recent_minutes, self.stuck_minutes = recent_minutes, stuck_minutes
        self._apps: dict[Component, Resource | None] = {}

    def new_facts(self) -> Facts:
        # The S3 store is a brokered service, and only a network policy lets the proxy reach the mirror.
        return Facts(s3_brokered=True, network_policies=True)

    def check(self, layer: str, facts: Facts) -> list[Finding]:
        return {
            "public endpoint": self._endpoint, "security proxy": self._proxy, "mirror instances": self._mirrors,
            "S3": self._s3, "upstream": self._upstream, "deployments": self._deployments,
            "recent errors": self._errors,
        }[layer](facts)

    def _app(self, component: Component) -> Resource | None:
        if component not in self._apps:
            self._apps[component] = self.space.app(component)
        return self._apps[component]

    # ------------------------------------------------------------------ layers

    def _endpoint(self, facts: Facts) -> list[Finding]:
        try:
            resp = requests.get(f"{self.public_url}/v2/", timeout=PROBE_TIMEOUT)
        except requests.RequestException as exc:
            facts.endpoint_status = None
            return [Finding("public endpoint", f"GET {self.public_url}/v2/", False,
                            f"no answer: {exc.__class__.__name__}")]
        denied = resp.status_code == 403 and "DENIED" in resp.text
        # This machine is usually outside the allow-list: the proxy's own refusal means it answers.
        facts.endpoint_status = 200 if denied else resp.status_code
        return [Finding("public endpoint", f"GET {self.public_url}/v2/", resp.status_code == 200 or denied,
                        f"{resp.status_code}" + (" DENIED: the proxy answers; this machine is not on the allow-list"
                                                 if denied else ""))]

    def _proxy(self, facts: Facts) -> list[Finding]:
        proxy, mirror = self._app("proxy"), self._app("registry")
        if proxy is None:
            facts.proxy_running = False
            return [Finding("security proxy", "app exists", False, f"no app {self.space.cf.proxy_app}")]
        found, states = self._instances("security proxy", proxy)
        facts.proxy_running = states.get("RUNNING", 0) > 0
        if mirror is not None:
            ok = any(allows_proxy_to_mirror(p, proxy, mirror) for p in self.cc.policies(proxy))
            facts.network_policy_missing = not ok
            found.append(Finding("security proxy", f"network policy proxy -> mirror tcp {MIRROR_PORT}", ok,
                                 "present" if ok else "missing: the proxy cannot connect to the mirror"))
        return found

    def _mirrors(self, facts: Facts) -> list[Finding]:
        mirror = self._app("registry")
        facts.mirrors = []
        if mirror is None:
            return [Finding("mirror instances", "app exists", False, f"no app {self.space.cf.mirror_app}")]
        process = self.cc.web_process(mirror)
        crashes = self._crashes(mirror, process)
        found = []
        for instance in self.cc.process_stats(process):
            state, index = instance.get("state", "UNKNOWN"), instance.get("index")
            # A crash-looping instance shows RUNNING between crashes: its crashes say otherwise.
            crashed = crashes.get(index)
            healthy = state == "RUNNING" and crashed is None
            reason = crashed or (crash_reason(self.cc, mirror) if state == "CRASHED" else None)
            facts.mirrors.append({"name": f"{mirror['name']}/{index}", "running": healthy,
                                  "status": 200 if healthy else None, "seconds": None,
                                  "exit_reason": None if healthy else (reason or state), "errors": []})
            found.append(Finding(f"mirror {mirror['name']}/{index}", "instance state", healthy,
                                 f"{state}, up {instance.get('uptime', 0)} s" if healthy else
                                 f"{state}" + (f", crashing: {reason}" if reason else "")))
        return found or [Finding("mirror instances", "instances", False, "none reported")]

    def _s3(self, facts: Facts) -> list[Finding]:
        return [Finding("S3", "bucket and credentials", None,
                        "brokered service, reachable only from the mirror: see the mirror's crash reasons")]

    def _upstream(self, facts: Facts) -> list[Finding]:
        return upstream_findings(self.space.settings, facts, self.repository, self.tag)

    def _deployments(self, facts: Facts) -> list[Finding]:
        found = []
        facts.stuck_deployments = []
        now = datetime.now(timezone.utc)
        for component in APPS:
            app = self._app(component)
            if app is None:
                continue
            active = self.cc.active_deployments(app)
            for deployment in active:
                age = now - _time(deployment.get("created_at"))
                stuck = age >= timedelta(minutes=self.stuck_minutes)
                text = (f"{app['name']}: {deployment['guid']} {deployment['status'].get('reason')} for "
                        f"{age.total_seconds() / 60:.1f} min")
                if stuck:
                    facts.stuck_deployments.append(text)
                found.append(Finding("deployments", f"{app['name']} active deployment", not stuck, text))
            if not active:
                found.append(Finding("deployments", f"{app['name']} active deployment", True, "none"))
        return found

    def _errors(self, facts: Facts) -> list[Finding]:
        since = self._recent()
        found = []
        for component in ("proxy", "registry"):
            app = self._app(component)  # type: ignore[arg-type]
            if app is None:
                continue
            recent = [e for e in self.cc.crash_events(app, limit=50) if str(e.get("created_at", "")) >= since]
            if recent:
                facts.crashing_apps.append(app["name"])
            last = (recent[0].get("data") or {}) if recent else {}
            found.append(Finding(app["name"], f"crashes in the last {self.recent_minutes:g} min", None,
                                 f"{len(recent)}" + (f"; last: {clip(str(last.get('exit_description') or last.get('reason')))}"
                                                     if recent else "")))
        return found

    # ------------------------------------------------------------------ helpers

    def _instances(self, layer: str, app: Resource) -> tuple[list[Finding], dict[str, int]]:
        process = self.cc.web_process(app)
        states: dict[str, int] = {}
        for instance in self.cc.process_stats(process):
            states[instance.get("state", "UNKNOWN")] = states.get(instance.get("state", "UNKNOWN"), 0) + 1
        text = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no instances"
        reason = crash_reason(self.cc, app) if states.get("CRASHED") else None
        return [Finding(layer, f"{app['name']} instances ({process.get('instances')} desired)",
                        states.get("RUNNING", 0) == process.get("instances"),
                        text + (f"; last crash: {reason}" if reason else ""))], states

    def _crashes(self, app: Resource, process: Resource) -> dict[int, str]:
        """Instance index -> Diego's exit description, for crashes of the process version that runs now
        within the recent window (an earlier version's crashes are history, not the present)."""
        since = self._recent()
        found: dict[int, str] = {}
        for event in self.cc.crash_events(app, limit=100):
            data = event.get("data") or {}
            if str(event.get("created_at", "")) < since or data.get("version") != process.get("version"):
                continue
            found.setdefault(data.get("index"), clip(str(data.get("exit_description") or data.get("reason"))))
        return found

    def _recent(self) -> str:
        """The start of the recent window, as CC writes times (ISO, UTC, so they compare as text)."""
        return (datetime.now(timezone.utc) - timedelta(minutes=self.recent_minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: object) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(timezone.utc)
