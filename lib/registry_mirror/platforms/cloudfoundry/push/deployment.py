"""The rolling deployment of a new droplet, waiting until it serves, and the failure policy.

CC finalizes a deployment once its new instances pass their health check, but waits forever on
instances that crash; so the wait ends early on a crash of the new instances. What then happens is
the environment's `on_failure`: `stop` leaves everything for debugging, `cancel` cancels (or deploys
the previous droplet again) and waits until it serves.
"""
from __future__ import annotations

from typing import NoReturn

from ..capabilities import capabilities
from ..health import InstancesUnhealthy, crash_reason
from ..resources import Resource
from ..space import Component, Space
from ....deploy_report import StepRecorder
from ....errors import DeployError


def rolling_deployment(space: Space, steps: StepRecorder, component: Component, app: Resource, droplet: Resource,
                       previous: str | None) -> None:
    """Deploy `droplet`, then wait until every instance serves; on failure apply the policy and raise."""

    def deploy() -> str:
        deployment = start(space, app, droplet["guid"])
        try:
            done = wait_deployed(space, app, deployment)
            health = space.wait_serving(app, since=deployment["created_at"])
        except (TimeoutError, InstancesUnhealthy) as exc:
            active = space.cc.deployment(deployment["guid"])["status"]["value"] == "ACTIVE"
            fail(space, component, app, deployment["guid"] if active else None, previous, str(exc))
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


def start(space: Space, app: Resource, droplet_guid: str) -> Resource:
    """A rolling deployment of a droplet; `options.max_in_flight` only where CC knows it (preflight said so)."""
    max_in_flight = space.cf.max_in_flight if capabilities(space.cc.session).max_in_flight else None
    deployment = space.cc.create_deployment(app, droplet_guid=droplet_guid, max_in_flight=max_in_flight)
    assert deployment is not None  # only called from steps, which a dry run never runs
    return deployment


def wait_deployed(space: Space, app: Resource, deployment: Resource) -> Resource:
    """Poll the deployment to FINALIZED/DEPLOYED; a crash of its new instances ends the wait early."""

    def finished(current: Resource) -> bool:
        if current["status"]["value"] == "FINALIZED":
            return True
        reason = crash_reason(space.cc, app, since=deployment["created_at"])
        if reason is not None:
            raise InstancesUnhealthy(f"{app['name']}: new instances crash: {reason}")
        return False

    done = space.cc.session.poll(lambda: space.cc.deployment(deployment["guid"]), finished,
                                 timeout=space.cf.deploy_timeout_seconds, what=f"deployment {deployment['guid']}")
    if done["status"].get("reason") != "DEPLOYED":
        raise InstancesUnhealthy(f"deployment {deployment['guid']} ended {done['status'].get('reason')}")
    return done


def wait_finalized(space: Space, guid: str, *, what: str) -> Resource:
    return space.cc.session.poll(lambda: space.cc.deployment(guid), lambda d: d["status"]["value"] == "FINALIZED",
                                 timeout=space.cf.deploy_timeout_seconds, what=what)


def cancel(space: Space, guid: str) -> Resource:
    """Cancel an ACTIVE deployment and wait until CC has put back what served before."""
    space.cc.cancel_deployment(guid)
    return wait_finalized(space, guid, what=f"cancel of {guid}")


def fail(space: Space, component: Component, app: Resource, deployment: str | None, previous: str | None,
         what: str) -> NoReturn:
    """Apply the environment's failure policy, then raise DeployError saying what was done."""
    name = space.app_name(component)
    if space.settings.on_failure == "stop":
        left = f"; deployment {deployment} left ACTIVE for debugging" if deployment else "; left as it is"
        raise DeployError(f"{name}: {what}{left} (on_failure: stop)")
    outcome = []
    if deployment is not None:
        cancel(space, deployment)
        outcome.append(f"deployment {deployment} cancelled")
    elif previous is not None and _droplet_guid(space, app) != previous:
        # Already finalized (e.g. the app was stopped): deploy what served before, with today's env.
        again = start(space, app, previous)
        wait_finalized(space, again["guid"], what=f"redeploy of {previous}")
        outcome.append(f"previous droplet {previous} deployed again")
    if previous is None:
        # A first deploy has nothing to go back to; stopped, it does not crash-loop meanwhile.
        space.cc.stop_app(app)
        raise DeployError(f"{name}: {what}; first deploy, nothing to go back to: app stopped (on_failure: cancel)")
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
