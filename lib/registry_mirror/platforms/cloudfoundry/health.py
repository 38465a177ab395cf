"""Are an app's instances serving? What "deployed" must mean on Cloud Foundry.

CC finalizes a deployment at once when the app was stopped, and a DEPLOYED deployment says nothing
about the instances. So after every deployment or start the runbook polls the web process's stats
until every desired instance is RUNNING and stays so for a settle window: a crash-looping instance
shows RUNNING for a moment between crashes. A CRASHED instance fails at once, with Diego's reason
from the crash audit events (or the stats' details); the cf CLI fails a push the same way when
every instance crashed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .resources import CloudController, Resource
from .session import PollTimeout
from ...errors import DeployError


class InstancesUnhealthy(DeployError):
    """Instances crashed, or did not all run through the settle window before the deadline."""


@dataclass(frozen=True)
class Health:
    desired: int
    running: int
    states: dict[str, int]  # state -> instance count at the last poll

    def summary(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items())) or "no instances"


def wait_serving(cc: CloudController, app: Resource, *, timeout: float, settle: float,
                 since: str | None = None) -> Health:
    """Poll until every desired web instance of `app` has been RUNNING for `settle` seconds.

    Raises InstancesUnhealthy naming the crash reason when an instance crashes, or the states seen
    when the deadline passes. `since` (an ISO time) limits the crash events read to this attempt.
    """
    clock = cc.session.clock
    healthy_since: list[float] = []  # when every instance was first seen RUNNING, in this streak

    def settled(health: Health) -> bool:
        crashed = health.states.get("CRASHED", 0)
        if crashed:
            raise InstancesUnhealthy(f"{app['name']}: {crashed} of {health.desired} instance(s) crashed: "
                                     f"{crash_reason(cc, app, since=since) or 'no reason reported'}")
        if not (health.desired and health.running == health.desired):
            healthy_since.clear()
            return False
        now = clock()
        if not healthy_since:
            healthy_since.append(now)
        return now - healthy_since[0] >= settle

    try:
        return cc.session.poll(lambda: instance_health(cc, app), settled, timeout=timeout,
                               what=f"{app['name']} instances")
    except PollTimeout as exc:
        last: Health = exc.last
        raise InstancesUnhealthy(f"{app['name']}: not all instances running after {timeout:.0f} s "
                                 f"({last.summary()} of {last.desired})") from None


def instance_health(cc: CloudController, app: Resource) -> Health:
    process = cc.web_process(app)
    states: dict[str, int] = {}
    for instance in cc.process_stats(process):
        state = instance.get("state", "UNKNOWN")
        states[state] = states.get(state, 0) + 1
    return Health(desired=int(process.get("instances") or 0), running=states.get("RUNNING", 0), states=states)


def crash_reason(cc: CloudController, app: Resource, *, since: str | None = None) -> str | None:
    """Diego's own words for the newest crash of the app (exit description, else the reason)."""
    for event in cc.crash_events(app, limit=10):
        if since and str(event.get("created_at", "")) < since:
            continue  # a crash of an earlier attempt (ISO times in UTC compare as text)
        data = event.get("data") or {}
        reason = data.get("exit_description") or data.get("reason")
        if reason:
            return str(reason)[:300]
    return None
