"""Which state both apps are in, in one line, and one row per app: the platform's status."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .health import instance_health
from .space import APPS, Space
from ..base import PlatformStatus


@dataclass(frozen=True)
class AppState:
    name: str
    state: str  # STARTED, STOPPED, or "absent"
    desired: int = 0
    running: int = 0
    deploying: bool = False  # a deployment is ACTIVE

    @property
    def serving(self) -> bool:
        return self.state == "STARTED" and self.desired > 0 and self.running == self.desired


def condition(apps: list[AppState]) -> str:
    """RUNNING (every app serves), STOPPED (the apps exist and none is started), NOT DEPLOYED (no app),
    else DEGRADED, naming what is wrong."""
    present = [a for a in apps if a.state != "absent"]
    deploying = [a.name for a in apps if a.deploying]
    note = f"; deployment in flight: {', '.join(deploying)}" if deploying else ""
    if not present:
        return "NOT DEPLOYED: " + " and ".join(a.name for a in apps) + " do not exist"
    if all(a.serving for a in apps):
        return "RUNNING: " + ", ".join(f"{a.name} {a.running}/{a.desired}" for a in apps) + note
    if all(a.state == "STOPPED" for a in present):
        missing = [a.name for a in apps if a.state == "absent"]
        return ("STOPPED: " + ", ".join(a.name for a in present) + " stopped (kept with their revisions)"
                + (f"; {', '.join(missing)} does not exist" if missing else "") + note)
    problems = []
    for a in apps:
        if a.state == "absent":
            problems.append(f"{a.name} does not exist")
        elif a.state != "STARTED":
            problems.append(f"{a.name} {a.state}")
        elif not a.serving:
            problems.append(f"{a.name} {a.running}/{a.desired} running")
    return "DEGRADED: " + "; ".join(problems) + note


def platform_status(space: Space) -> PlatformStatus:
    cc = space.cc
    rows, states = [], []
    for component in APPS:
        app = space.app(component)
        if app is None:
            rows.append({"component": space.app_name(component), "state": "absent"})
            states.append(AppState(space.app_name(component), "absent"))
            continue
        health = instance_health(cc, app)
        deployments = cc.deployments(app)
        last = deployments[-1]["status"] if deployments else {}
        droplet = cc.current_droplet(app)
        rows.append({"component": app["name"], "state": app["state"], "running": health.running,
                     "droplet": droplet["guid"] if droplet else None,
                     "last deployment": f"{last.get('value', '-')}/{last.get('reason', '-')}",
                     "routes": ", ".join(cc.route_urls(app))})
        states.append(AppState(app["name"], app["state"], health.desired, health.running,
                               bool(cc.active_deployments(app))))
    return PlatformStatus(condition(states), pd.DataFrame(rows))
