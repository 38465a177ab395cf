"""The one way into the mirror: a container network policy proxy -> mirror on tcp 5000."""
from __future__ import annotations

from .resources import CloudController, Resource
from ...deploy_report import StepRecorder
from ...rendering import MIRROR_PORT

STEP = f"policy proxy -> mirror tcp {MIRROR_PORT}"


def ensure_network_policy(cc: CloudController, steps: StepRecorder, mirror: Resource | None,
                          proxy: Resource | None) -> None:
    """Create the policy when missing; both apps must exist (a dry run of a first deploy says so)."""
    if mirror is None or proxy is None:
        if steps.dry_run:
            steps.run("network", STEP, lambda: None, detail="after both apps exist")
        return
    if any(allows_proxy_to_mirror(p, proxy, mirror) for p in cc.policies(proxy, mirror)):
        steps.unchanged("network", STEP, "exists")
        return
    steps.run("network", STEP, lambda: cc.create_policy(proxy, mirror, port=MIRROR_PORT) or "created")


def allows_proxy_to_mirror(policy: Resource, proxy: Resource, mirror: Resource) -> bool:
    """Does `policy` let the proxy reach the mirror's port over tcp (a port range covering it counts)?"""
    dest = policy.get("destination", {})
    ports = dest.get("ports", {})
    return (policy.get("source", {}).get("id") == proxy["guid"] and dest.get("id") == mirror["guid"]
            and dest.get("protocol") == "tcp"
            and ports.get("start", dest.get("port")) <= MIRROR_PORT <= ports.get("end", dest.get("port")))
