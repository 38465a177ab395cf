"""Stage a package into a droplet; a failed build goes through the failure policy."""
from __future__ import annotations

from typing import Any

from .deployment import Before, fail
from ..resources import Resource
from ..space import Component, Space
from ....deploy_report import StepRecorder


def build(space: Space, steps: StepRecorder, component: Component, app: Resource, package: Resource,
          before: Before) -> Resource:
    """The droplet staged from `package` (a placeholder guid in a dry run)."""
    result: dict[str, Any] = {"guid": "<planned droplet>"}

    def stage() -> str:
        created = space.cc.create_build(package)
        assert created is not None  # steps never run in a dry run
        built = space.cc.session.poll(lambda: space.cc.build(created["guid"]),
                                      lambda b: b["state"] in ("STAGED", "FAILED"),
                                      timeout=space.cf.deploy_timeout_seconds, what="build")
        if built["state"] == "FAILED":
            fail(space, component, app, None, before, f"build failed: {built.get('error')}")
        result["guid"] = built["droplet"]["guid"]
        return f"droplet {result['guid']}"

    steps.run(space.app_name(component), "build", stage)
    return result
