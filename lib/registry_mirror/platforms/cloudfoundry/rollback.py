"""Going back: cancel a deployment in flight, else deploy an earlier revision's droplet again.

A revision captures the app's environment, credentials included, and those may have been rotated
away since. So a rollback never deploys a revision as it was: it sets that revision's configuration
with today's credentials, then deploys the revision's droplet (see README "Rollback keeps today's
credentials").
"""
from __future__ import annotations

from .push.deployment import cancel, start, wait_deployed
from .push.environment import CREDENTIAL_VARS, set_env
from .push.fingerprint import LEGACY_DIGEST_VAR, record
from .resources import Resource
from .space import Component, Space
from ...deploy_report import StepRecorder
from ...errors import DeployError


def roll_back(space: Space, steps: StepRecorder, component: Component, revision: str = "") -> None:
    """Cancel the app's active deployment; or deploy `revision` (default: the one before the deployed
    one) again with today's credentials. Then, unless a dry run, wait until it serves."""
    app = space.existing_app(component, doing="nothing to roll back")
    if cancel_active(space, steps, app):
        return
    redeploy_revision(space, steps, app, pick_revision(space, app, revision))
    _verify(space, steps, app)


def cancel_active(space: Space, steps: StepRecorder, app: Resource) -> bool:
    """Cancel the app's active deployment, if any (CC puts back what served before), and verify what
    serves then; False when nothing was active."""
    active = space.cc.active_deployments(app)
    if not active:
        return False
    guid = active[0]["guid"]
    steps.run(app["name"], "cancel active deployment",
              lambda: f"deployment {guid} {cancel(space, guid)['status'].get('reason')}",
              detail=f"POST /v3/deployments/{guid}/actions/cancel")
    _verify(space, steps, app)
    return True


def redeploy_revision(space: Space, steps: StepRecorder, app: Resource, target: Resource) -> None:
    cc, version = space.cc, target["version"]
    then, now = cc.revision_env(target), cc.app_env(app)
    env = {k: v for k, v in then.items() if k not in CREDENTIAL_VARS and k != LEGACY_DIGEST_VAR}
    env |= {k: v for k, v in now.items() if k in CREDENTIAL_VARS}
    changes: dict[str, str | None] = {**env, **{k: None for k in now if k not in env}}
    steps.run(app["name"], f"configuration of revision {version}, today's credentials",
              lambda: set_env(cc, app, changes),
              detail=f"{len(env)} variables, {len(CREDENTIAL_VARS & set(env))} credentials kept")
    # Whatever the fingerprint said no longer runs: the next deploy must apply the params.
    steps.run(app["name"], "forget fingerprint", lambda: record(cc, app, None))

    def redeploy() -> str:
        deployment = start(space, app, target["droplet"]["guid"])
        done = wait_deployed(space, app, deployment)
        return f"droplet of revision {version} deployed again by {done['guid']}"

    steps.run(app["name"], f"deploy the droplet of revision {version}", redeploy,
              detail=f"POST /v3/deployments {{droplet: {target['droplet']['guid']}}}")


def pick_revision(space: Space, app: Resource, wanted: str) -> Resource:
    """`wanted` by guid or version; empty: the newest deployable revision older than the deployed one."""
    revisions = space.cc.revisions(app)
    if wanted:
        for rev in revisions:
            if rev["guid"] == wanted or str(rev["version"]) == wanted:
                return rev
        raise DeployError(f"revision {wanted} is not a revision of {app['name']}")
    current = max((r["version"] for r in space.cc.deployed_revisions(app)), default=None)
    older = [r for r in revisions if current is not None and r["version"] < current and r.get("deployable", True)]
    if not older:
        raise DeployError(f"{app['name']} has no earlier deployable revision to roll back to")
    return older[-1]


def _verify(space: Space, steps: StepRecorder, app: Resource) -> None:
    if not steps.dry_run:
        steps.run(app["name"], "verify", lambda: space.verify_serving(app))
