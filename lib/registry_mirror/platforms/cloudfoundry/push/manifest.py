"""Apply the app's manifest to the space (a job): creates the app, its routes, instances and env.

The manifest's `docker.image` is ignored by the API: the image comes from the package. On the rolling
path (the app exists and CC takes deployment options) the manifest goes without `instances`, as the
cf CLI sends it: scaling it would scale the old process now, before the new droplet is even staged;
the instances go as the deployment's `options.web_instances` instead.
"""
from __future__ import annotations

import re

from ..capabilities import capabilities
from ..space import Component, Space
from ....deploy_report import StepRecorder

_INSTANCES = re.compile(r"^  instances: *\d+ *\n", re.M)


def apply_manifest(space: Space, steps: StepRecorder, component: Component, manifest: str, *,
                   rolling: bool) -> None:
    """`rolling`: the app exists, so a deployment (not the manifest) brings its instance count."""
    if rolling and capabilities(space.cc.session).max_in_flight:
        manifest = without_instances(manifest)
    steps.run(space.app_name(component), "apply manifest",
              lambda: "manifest applied" if space.cc.apply_manifest(space.guid, manifest) else "planned")


def without_instances(manifest: str) -> str:
    """The manifest without the app's `instances` line (what the rendering emits, two spaces in)."""
    return _INSTANCES.sub("", manifest)
