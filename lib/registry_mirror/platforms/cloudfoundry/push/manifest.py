"""Apply the app's manifest to the space (a job): creates the app, its routes, instances and env.

The manifest's `docker.image` is ignored by the API: the image comes from the package.
"""
from __future__ import annotations

from ..space import Component, Space
from ....deploy_report import StepRecorder


def apply_manifest(space: Space, steps: StepRecorder, component: Component, manifest: str) -> None:
    steps.run(space.app_name(component), "apply manifest",
              lambda: "manifest applied" if space.cc.apply_manifest(space.guid, manifest) else "planned")
