"""The triage remedies on Cloud Foundry, each through the platform's own deploy, rollback, cancel or
scale (the gate and the dry run are decided before, in incidents/remedies.py)."""
from __future__ import annotations

from ..base import Platform
from ...errors import ParameterError


def run_remedy(target: Platform, name: str, *, scale_to: int, dry_run: bool) -> str:
    """What the remedy did (or in a dry run would do), in one line."""
    if name == "scale-mirrors":
        return target.scale(component="registry", instances=scale_to, dry_run=dry_run).changes()
    if name == "cancel-deployment":
        report = target.cancel_deployments(dry_run=dry_run)
        return report.changes() if report.steps else "no active deployment to cancel"
    if name == "rollback":
        return "; ".join(target.rollback(component=c, dry_run=dry_run).changes() for c in ("registry", "proxy"))
    if name == "redeploy-proxy":
        return target.deploy(dry_run=dry_run, component="proxy").changes()
    if name == "redeploy":
        # A crashed app is not "serving", so the deploy does not skip it: new instances, rolling.
        return target.deploy(dry_run=dry_run, component="all").changes()
    if name == "replace-mirrors":
        return target.deploy(dry_run=dry_run, component="registry", replace_mirrors=True).changes()
    raise ParameterError(f"remedy {name!r} has no Cloud Foundry form")
