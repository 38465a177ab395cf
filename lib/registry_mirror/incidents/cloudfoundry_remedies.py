"""The remedies on Cloud Foundry, through the platform's own deploy and rollback (CC v3 API)."""
from __future__ import annotations

from collections.abc import Callable

from ..platforms.cloudfoundry.platform import CloudFoundryPlatform
from ..errors import ParameterError


def cloudfoundry_runner(target: CloudFoundryPlatform, remedy: str, scale_to: int = 0) -> Callable[[bool], str]:
    def run(dry_run: bool) -> str:
        if remedy == "scale-mirrors":
            return target.scale(component="registry", instances=scale_to, dry_run=dry_run).changes()
        if remedy == "cancel-deployment":
            done = []
            for component in ("registry", "proxy"):
                app = target.app_named(component)  # type: ignore[arg-type]
                active = app is not None and target.session.list_all(
                    "/v3/deployments", {"app_guids": app["guid"], "status_values": "ACTIVE"})
                if active:
                    # rollback() cancels an active deployment: CC puts back what served before.
                    done.append(target.rollback(component=component, dry_run=dry_run).changes())  # type: ignore[arg-type]
            return "; ".join(done) or "no active deployment to cancel"
        if remedy == "rollback":
            return "; ".join(target.rollback(component=c, dry_run=dry_run).changes()  # type: ignore[arg-type]
                             for c in ("registry", "proxy"))
        if remedy == "redeploy-proxy":
            return target.deploy(dry_run=dry_run, component="proxy").changes()
        if remedy in ("redeploy", "replace-mirrors"):
            # A crashed app is not "serving", so the deploy does not skip it: new instances, rolling.
            return target.deploy(dry_run=dry_run, component="registry" if remedy == "replace-mirrors"
                                 else "all").changes()
        raise ParameterError(f"remedy {remedy!r} has no Cloud Foundry form")
    return run

