"""Are an app's instances serving? What "deployed" must mean on Cloud Foundry.

CC finalizes a deployment at once when the app was stopped, and a DEPLOYED deployment says nothing
about the instances. So after every deployment or start the runbook polls the web process's stats
until every desired instance is RUNNING and stays so for a settle window: a crash-looping instance
shows RUNNING for a moment between crashes.

What fails, and what is tolerated (the rule docs/cloud-foundry.md explains): Diego restarts a
crashed instance at once for its first crashes, so one transient crash (the registry panics at boot
when Docker Hub blips) is not a failed deploy. The wait fails, with Diego's reason from the crash
audit events, when every instance is CRASHED at once (the cf CLI's own rule for a push), or when
the instances crashed more than `crash_budget` times since the deployment began. Only crashes of
the deployment's new processes count: old instances crash-looping while they are replaced (the
usual reason to redeploy) say nothing about the new droplet.
"""
from __future__ import annotations

from dataclasses import dataclass

from .resources import CloudController, Resource
from .session import CfApiError, PollTimeout
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


DEFAULT_CRASH_BUDGET = 3  # Diego restarts an instance at once after each of its first three crashes


def wait_serving(cc: CloudController, app: Resource, *, timeout: float, settle: float,
                 since: str | None = None, crash_budget: int = DEFAULT_CRASH_BUDGET) -> Health:
    """Poll until every desired web instance of `app` has been RUNNING for `settle` seconds.

    Raises InstancesUnhealthy naming the crash reason when instances crash, or the states seen when
    the deadline passes. `since` (an ISO time, the deployment's start): crashes before it are another
    attempt's, and up to `crash_budget` crashes since are tolerated unless every instance is CRASHED;
    without it any CRASHED instance fails (nothing vouches for an instance that crashed before).
    """
    clock = cc.session.clock
    healthy_since: list[float] = []  # when every instance was first seen RUNNING, in this streak

    def settled(health: Health) -> bool:
        crashed = health.states.get("CRASHED", 0)
        if crashed:
            crashes = len(_crashes_since(cc, app, since, limit=crash_budget + 1)) if since else 0
            if since is None or crashed >= health.desired or crashes > crash_budget:
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


def crash_verdict(cc: CloudController, app: Resource, deployment: Resource, *, crash_budget: int) -> str | None:
    """Why a rolling deployment cannot succeed, or None while it may: every instance of its new
    processes CRASHED at once, or their crashes since it began past `crash_budget`. Crashes count only
    when the event's actor is one of `deployment.new_processes` or its `data.version` is theirs."""
    new = []
    for listed in deployment.get("new_processes") or []:
        try:
            new.append(cc.process(listed["guid"]))
        except CfApiError as exc:
            if exc.status != 404:  # gone: a cancel already removed it
                raise
    if not new:
        return None
    guids, versions = {p["guid"] for p in new}, {p.get("version") for p in new} - {None}
    crashes = [e for e in _crashes_since(cc, app, deployment["created_at"], limit=max(10, crash_budget + 1))
               if (e.get("actor") or {}).get("guid") in guids or (e.get("data") or {}).get("version") in versions]
    states = [i.get("state") for p in new for i in cc.process_stats(p)]
    reason = _reason(crashes[0]) if crashes else "no reason reported"
    if states and all(state == "CRASHED" for state in states):
        return f"all {len(states)} new instance(s) CRASHED: {reason}"
    if len(crashes) > crash_budget:
        return f"{len(crashes)} crashes since the deployment began, more than the {crash_budget} tolerated: {reason}"
    return None


def _crashes_since(cc: CloudController, app: Resource, since: str | None, *, limit: int) -> list[Resource]:
    # ISO times in UTC compare as text.
    return [e for e in cc.crash_events(app, limit=limit) if not since or str(e.get("created_at", "")) >= since]


def _reason(event: Resource) -> str:
    data = event.get("data") or {}
    return str(data.get("exit_description") or data.get("reason") or "no reason reported")[:300]


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
