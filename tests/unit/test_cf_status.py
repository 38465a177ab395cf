"""The one-line condition of both Cloud Foundry apps, from what CC says of each (no API needed)."""
from __future__ import annotations

import pytest

from registry_mirror.platforms.cloudfoundry.status import AppState, condition

MIRROR, PROXY = "docker-registry-mirror", "docker-registry-proxy"


@pytest.mark.parametrize("apps,expected", [
    ([AppState(MIRROR, "absent"), AppState(PROXY, "absent")],
     f"NOT DEPLOYED: {MIRROR} and {PROXY} do not exist"),
    ([AppState(MIRROR, "STARTED", 4, 4), AppState(PROXY, "STARTED", 2, 2)],
     f"RUNNING: {MIRROR} 4/4, {PROXY} 2/2"),
    ([AppState(MIRROR, "STARTED", 4, 4, deploying=True), AppState(PROXY, "STARTED", 2, 2)],
     f"RUNNING: {MIRROR} 4/4, {PROXY} 2/2; deployment in flight: {MIRROR}"),
    ([AppState(MIRROR, "STOPPED", 4), AppState(PROXY, "STOPPED", 2)],
     f"STOPPED: {MIRROR}, {PROXY} stopped (kept with their revisions)"),
    ([AppState(MIRROR, "STOPPED", 4), AppState(PROXY, "absent")],
     f"STOPPED: {MIRROR} stopped (kept with their revisions); {PROXY} does not exist"),
    ([AppState(MIRROR, "STARTED", 4, 1), AppState(PROXY, "STARTED", 2, 2)],
     f"DEGRADED: {MIRROR} 1/4 running"),
    ([AppState(MIRROR, "STARTED", 4, 4), AppState(PROXY, "STOPPED", 2)],
     f"DEGRADED: {PROXY} STOPPED"),
    ([AppState(MIRROR, "STARTED", 4, 4), AppState(PROXY, "absent")],
     f"DEGRADED: {PROXY} does not exist"),
    ([AppState(MIRROR, "STARTED", 0, 0), AppState(PROXY, "STARTED", 2, 2)],
     f"DEGRADED: {MIRROR} 0/0 running"),  # scaled to nothing serves nothing
], ids=["not-deployed", "running", "running-deploying", "stopped", "stopped-one-absent", "degraded-instances",
        "degraded-stopped", "degraded-absent", "degraded-zero"])
def test_condition(apps: list[AppState], expected: str) -> None:
    assert condition(apps) == expected
