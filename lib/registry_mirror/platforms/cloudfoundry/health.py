"""Are an app's instances serving? What "deployed" must mean on Cloud Foundry.

CC finalizes a deployment at once when the app was stopped, and a DEPLOYED deployment says nothing
about the instances (FACTS 6). So after every deployment or start the runbook polls the web
process's stats until every desired instance is RUNNING and stays so for a settle window: a
crash-looping instance shows RUNNING for a moment between crashes. A CRASHED instance fails at
once, with Diego's reason from the crash audit events (or the stats' details); the cf CLI fails a
push the same way when every instance crashed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .session import CfSession
from ...errors import DeployError

CRASH_EVENT = "audit.app.process.crash"


class InstancesUnhealthy(DeployError):
    """Instances crashed, or did not all run through the settle window before the deadline."""


@dataclass(frozen=True)
class Health:
    desired: int
    running: int
    states: dict[str, int]  # state -> instance count at the last poll

    def summary(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items())) or "no instances"


def wait_serving(session: CfSession, app: dict, *, timeout: float, settle: float, interval: float,
                 clock: Callable[[], float] = time.monotonic, since: str | None = None) -> Health:
    """Poll until every desired web instance of `app` has been RUNNING for `settle` seconds.

    Raises InstancesUnhealthy naming the crash reason when an instance crashes, or the states seen
    when the deadline passes. `since` (an ISO time) limits the crash events read to this attempt.
    """
    deadline = clock() + timeout
    healthy_since: float | None = None
    while True:
        health = instance_health(session, app)
        crashed = health.states.get("CRASHED", 0)
        if crashed:
            raise InstancesUnhealthy(f"{app['name']}: {crashed} of {health.desired} instance(s) crashed: "
                                     f"{crash_reason(session, app, since=since) or 'no reason reported'}")
        now = clock()
        if health.desired and health.running == health.desired:
            healthy_since = now if healthy_since is None else healthy_since
            if now - healthy_since >= settle:
                return health
        else:
            healthy_since = None
        if now >= deadline:
            raise InstancesUnhealthy(f"{app['name']}: not all instances running after {timeout:.0f} s "
                                     f"({health.summary()} of {health.desired})")
        session.sleep(interval)


def instance_health(session: CfSession, app: dict) -> Health:
    process = session.get(f"/v3/apps/{app['guid']}/processes/web")
    stats = session.get(f"/v3/processes/{process['guid']}/stats").get("resources") or []
    states: dict[str, int] = {}
    for instance in stats:
        states[instance.get("state", "UNKNOWN")] = states.get(instance.get("state", "UNKNOWN"), 0) + 1
    return Health(desired=int(process.get("instances") or 0), running=states.get("RUNNING", 0), states=states)


def crash_reason(session: CfSession, app: dict, *, since: str | None = None) -> str | None:
    """Diego's own words for the newest crash of the app (exit description, else the reason)."""
    params = {"types": CRASH_EVENT, "target_guids": app["guid"], "order_by": "-created_at", "per_page": "10"}
    events = session.get("/v3/audit_events", params).get("resources") or []
    for event in events:
        if since and str(event.get("created_at", "")) < since:
            continue  # a crash of an earlier attempt (ISO times in UTC compare as text)
        data = event.get("data") or {}
        reason = data.get("exit_description") or data.get("reason")
        if reason:
            return str(reason)[:300]
    return None
