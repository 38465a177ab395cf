"""The rolling deployment of a new droplet, waiting until it serves, and the failure policy.

CC finalizes a deployment once its new instances pass their health check, but waits forever on
instances that crash; so the wait ends early when the new instances crash past what Diego recovers
from (see `crash_verdict`). What then happens is the environment's `on_failure`: `stop` leaves
everything for debugging (and forgets the fingerprint: the app's environment holds the failed
inputs), `cancel` cancels (or deploys the previous droplet again), puts back the environment of the
revision that served before (CC's cancel restores the droplet only) and waits until it serves.

A deployment someone else superseded or cancelled is not ours to roll back: the runbook ends with an
error naming it and changes nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from ..capabilities import capabilities
from ..health import InstancesUnhealthy, crash_verdict
from ..resources import Resource
from ..space import Component, Space
from .environment import set_env
from .fingerprint import record
from ....deploy_report import StepRecorder
from ....errors import DeployError


class DeploymentTakenOver(DeployError):
    """Our deployment ended SUPERSEDED or CANCELED by another actor: theirs now, never rolled back."""


@dataclass(frozen=True)
class Before:
    """What served before this deploy: the droplet and the environment of the deployed revision."""

    droplet: str | None
    env: dict[str, str] | None  # None: nothing was deployed (a first deploy)


def served_before(space: Space, app: Resource | None) -> Before:
    """Read before any change: the current droplet and the newest deployed revision's environment."""
    if app is None or app["guid"].startswith("<"):
        return Before(None, None)
    droplet = space.cc.current_droplet(app)
    revisions = sorted(space.cc.deployed_revisions(app), key=lambda r: r["version"])
    env = space.cc.revision_env(revisions[-1]) if revisions else None
    return Before(droplet["guid"] if droplet else None, env)


def rolling_deployment(space: Space, steps: StepRecorder, component: Component, app: Resource, droplet: Resource,
                       before: Before) -> None:
    """Deploy `droplet`, then wait until every instance serves; on failure apply the policy and raise."""

    def deploy() -> str:
        deployment = start(space, app, droplet["guid"], web_instances=space.instances(component))
        try:
            done = wait_deployed(space, app, deployment)
            health = space.wait_serving(app, since=deployment["created_at"])
        except (TimeoutError, InstancesUnhealthy) as exc:
            active = space.cc.deployment(deployment["guid"])["status"]["value"] == "ACTIVE"
            fail(space, component, app, deployment["guid"] if active else None, before, str(exc),
                 ours=droplet["guid"])
        return (f"deployment {deployment['guid']} {done['status'].get('reason')}; "
                f"{health.running}/{health.desired} instances RUNNING for {space.cf.health_settle_seconds:g} s")

    steps.run(space.app_name(component), "rolling deployment, then instance health", deploy)


def deployment_in_flight(space: Space, components: tuple[Component, ...]) -> str | None:
    """One sentence naming the first ACTIVE deployment of these apps, or None. While one is in flight
    CC refuses process update and scale (422) and an apply_manifest job fails, so nothing may change."""
    for component in components:
        app = space.app(component)
        for deployment in space.cc.active_deployments(app) if app is not None else []:
            status = deployment.get("status") or {}
            return (f"deployment {deployment['guid']} of {app['name']} is in flight ({status.get('value')}/"
                    f"{status.get('reason')}, since {deployment.get('created_at')}): wait for it to finish, or "
                    f"cancel it (the cancel-deployment remedy or the rollback runbook), before changing the app")
    return None


def refuse_while_in_flight(space: Space, components: tuple[Component, ...]) -> None:
    """DeployError with that sentence, before any change, when a deployment of these apps is in flight."""
    sentence = deployment_in_flight(space, components)
    if sentence is not None:
        raise DeployError(sentence)


def start(space: Space, app: Resource, droplet_guid: str, *, web_instances: int | None = None) -> Resource:
    """A rolling deployment of a droplet; `options` only where CC knows them (preflight said so)."""
    able = capabilities(space.cc.session).max_in_flight
    deployment = space.cc.create_deployment(app, droplet_guid=droplet_guid,
                                            max_in_flight=space.cf.max_in_flight if able else None,
                                            web_instances=web_instances if able else None)
    assert deployment is not None  # only called from steps, which a dry run never runs
    return deployment


def wait_deployed(space: Space, app: Resource, deployment: Resource) -> Resource:
    """Poll the deployment to FINALIZED/DEPLOYED; crashes of its new instances past what the platform
    recovers from end the wait early; an end someone else caused raises DeploymentTakenOver."""

    def finished(current: Resource) -> bool:
        if current["status"]["value"] == "FINALIZED":
            return True
        verdict = crash_verdict(space.cc, app, current, crash_budget=space.cf.crash_budget)
        if verdict is not None:
            raise InstancesUnhealthy(f"{app['name']}: new instances crash: {verdict}")
        return False

    done = space.cc.session.poll(lambda: space.cc.deployment(deployment["guid"]), finished,
                                 timeout=space.cf.deploy_timeout_seconds, what=f"deployment {deployment['guid']}")
    reason = done["status"].get("reason")
    if reason in ("SUPERSEDED", "CANCELED"):
        raise DeploymentTakenOver(taken_over(space, app, done))
    if reason != "DEPLOYED":
        raise InstancesUnhealthy(f"deployment {deployment['guid']} ended {reason}")
    return done


def taken_over(space: Space, app: Resource, deployment: Resource) -> str:
    """One sentence: who ended our deployment, and that nothing is rolled back over them."""
    guid, reason = deployment["guid"], deployment["status"].get("reason")
    if reason == "SUPERSEDED":
        newer = [d for d in space.cc.deployments(app) if d["guid"] != guid and d["created_at"] >= deployment["created_at"]]
        by = f"by deployment {newer[-1]['guid']}" if newer else "by a newer deployment"
        return (f"{app['name']}: deployment {guid} was SUPERSEDED {by}, which someone else started: that "
                "deployment is theirs, so nothing was rolled back or redeployed over it")
    return (f"{app['name']}: deployment {guid} was CANCELED by someone else, not by this runbook: CC put back what "
            "served before, and nothing was redeployed over their decision")


def wait_finalized(space: Space, guid: str, *, what: str) -> Resource:
    return space.cc.session.poll(lambda: space.cc.deployment(guid), lambda d: d["status"]["value"] == "FINALIZED",
                                 timeout=space.cf.deploy_timeout_seconds, what=what)


def cancel(space: Space, guid: str) -> Resource:
    """Cancel an ACTIVE deployment and wait until CC has put back what served before."""
    space.cc.cancel_deployment(guid)
    return wait_finalized(space, guid, what=f"cancel of {guid}")


def fail(space: Space, component: Component, app: Resource, deployment: str | None, before: Before,
         what: str, *, ours: str | None = None) -> NoReturn:
    """Apply the environment's failure policy, then raise DeployError saying what was done. `ours`: the
    droplet this deploy staged (a current droplet that is neither ours nor the previous one is someone
    else's, and is left alone)."""
    name, previous = space.app_name(component), before.droplet
    if space.settings.on_failure == "stop":
        # The app's environment now holds the failed inputs: the recorded fingerprint must not vouch
        # for them, or a deploy of the previous params would find "nothing to change".
        record(space.cc, app, None)
        left = f"; deployment {deployment} left ACTIVE for debugging" if deployment else "; left as it is"
        raise DeployError(f"{name}: {what}{left} (on_failure: stop)")
    outcome = []
    if deployment is not None:
        cancel(space, deployment)
        outcome.append(f"deployment {deployment} cancelled")
    elif previous is not None:
        current = _droplet_guid(space, app)
        if current not in (previous, ours):
            raise DeploymentTakenOver(f"{name}: {what}; the current droplet {current} is neither this deploy's nor "
                                      f"the previous one, so someone else deployed it: nothing rolled back")
        if current != previous:
            # Already finalized (e.g. the app was stopped): deploy what served before.
            again = start(space, app, previous)
            wait_finalized(space, again["guid"], what=f"redeploy of {previous}")
            outcome.append(f"previous droplet {previous} deployed again")
    if previous is None:
        # A first deploy has nothing to go back to; stopped, it does not crash-loop meanwhile.
        space.cc.stop_app(app)
        record(space.cc, app, None)
        raise DeployError(f"{name}: {what}; first deploy, nothing to go back to: app stopped (on_failure: cancel)")
    if before.env is not None:
        # CC's cancel restores the droplet only; the manifest and the PATCH already set the new
        # environment, which the next restart would bring up. Put back the deployed revision's.
        now = space.cc.app_env(app)
        set_env(space.cc, app, {**before.env, **{k: None for k in now if k not in before.env}})
        outcome.append("the previous environment restored")
    done = "; ".join(outcome) or "nothing to cancel"
    try:
        health = space.wait_serving(app)
    except (TimeoutError, InstancesUnhealthy) as exc:
        raise DeployError(f"{name}: {what}; {done}; previous droplet NOT serving ({exc}): check the app now "
                          "(on_failure: cancel)") from None
    raise DeployError(f"{name}: {what}; {done}; previous droplet {previous} serves again "
                      f"({health.running} instance(s) running) (on_failure: cancel)")


def _droplet_guid(space: Space, app: Resource) -> str | None:
    droplet = space.cc.current_droplet(app)
    return droplet["guid"] if droplet else None
