"""Push an app as the cf CLI's push actor does, one step per module:

    manifest     apply the app's manifest to the space (a job)
    environment  the mirror's secrets, set in its environment
    package      the registry image pinned by digest (docker), or the proxy's nginx.conf (bits)
    build        stage the package into a droplet
    deployment   a rolling deployment of the droplet, waiting until every instance serves, and the
                 environment's failure policy
    fingerprint  what the app was deployed from, recorded once it serves; a deploy of the same inputs
                 is skipped while the instances serve
    routes       after the deploy: the mirror only on apps.internal, the proxy on its public route
"""
from __future__ import annotations

from .build import build
from .deployment import rolling_deployment, served_before
from .environment import secret_env, set_env
from .fingerprint import FINGERPRINT, LEGACY_DIGEST_VAR, fingerprint, record, recorded
from .manifest import apply_manifest
from .package import create_package
from ..health import InstancesUnhealthy, wait_serving
from ..services import S3Key
from ..space import Component, Space
from ....deploy_report import StepRecorder
from ....rendering import CfManifests


def push_app(space: Space, steps: StepRecorder, component: Component, manifests: CfManifests, key: S3Key | None,
             *, replace: bool = False) -> None:
    """Bring one app to the rendered manifests; `replace`: a new deployment even when nothing changed."""
    cc, settings = space.cc, space.settings
    name = space.app_name(component)
    manifest = manifests.mirror if component == "registry" else manifests.proxy
    app = space.app(component)
    secrets = secret_env(cc, settings, key, app) if component == "registry" else {}
    wanted = fingerprint(component, manifest, settings.registry.image or "", manifests.proxy_nginx_conf, secrets)
    if app is not None and app["state"] == "STARTED" and recorded(app) == wanted:
        if replace:
            steps.unchanged(name, "inputs unchanged", "replace_mirrors: new instances all the same")
        elif _still_serving(space, steps, app, wanted):
            return
    before = served_before(space, app)  # read before any change: what a failure goes back to
    apply_manifest(space, steps, component, manifest, rolling=app is not None)
    app = space.app(component) or {"guid": "<new app>", "name": name, "state": "STOPPED"}
    legacy = not app["guid"].startswith("<") and LEGACY_DIGEST_VAR in cc.app_env(app)
    env_changes: dict[str, str | None] = {**secrets, **({LEGACY_DIGEST_VAR: None} if legacy else {})}
    if env_changes:
        steps.run(name, "set secrets in app environment", lambda: set_env(cc, app, env_changes),
                  detail=f"{len(secrets)} variables (values hidden)")
    package = create_package(space, steps, component, app, manifests.proxy_nginx_conf)
    built = build(space, steps, component, app, package, before)
    rolling_deployment(space, steps, component, app, built, before)
    steps.run(name, "record fingerprint", lambda: record(cc, app, wanted), detail=f"annotation {FINGERPRINT}={wanted}")


def _still_serving(space: Space, steps: StepRecorder, app: dict, wanted: str) -> bool:
    """Same inputs: unchanged only if the instances serve now, through a settle window (a crash-looping
    app shows RUNNING between crashes)."""
    name, settle = app["name"], space.cf.health_settle_seconds
    try:
        health = wait_serving(space.cc, app, timeout=2 * settle + space.cc.session.poll_interval, settle=settle)
    except InstancesUnhealthy as exc:
        steps.unchanged(name, "inputs unchanged", f"but not serving ({exc}): deploying again")
        return False
    steps.unchanged(name, "deploy", f"fingerprint {wanted} deployed; {health.summary()}")
    return True
