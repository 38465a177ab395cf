"""The org and space the parameters name, and the two apps in it: what every step acts on."""
from __future__ import annotations

from typing import Literal

from .health import Health, wait_serving
from .resources import CloudController, Resource
from ...errors import DeployError
from ...parameters import CloudFoundrySettings, Settings

Component = Literal["registry", "proxy"]
APPS: tuple[Component, ...] = ("registry", "proxy")


class Space:
    """Looks the space up once and the apps every time (a deploy changes them)."""

    def __init__(self, settings: Settings, cc: CloudController) -> None:
        assert settings.cloudfoundry is not None
        self.settings = settings
        self.cf: CloudFoundrySettings = settings.cloudfoundry
        self.cc = cc
        self._found: Resource | None = None

    def find(self) -> Resource | None:
        """The space, or None when the org or the space does not exist."""
        if self._found is None:
            self._found = self.cc.space(self.cf.org, self.cf.space)
        return self._found

    @property
    def guid(self) -> str:
        found = self.find()
        if found is None:
            raise DeployError(f"space {self.where} not found")
        return found["guid"]

    @property
    def where(self) -> str:
        return f"{self.cf.org}/{self.cf.space}"

    def app_name(self, component: Component) -> str:
        return self.cf.mirror_app if component == "registry" else self.cf.proxy_app

    def app(self, component: Component) -> Resource | None:
        return self.cc.app(self.guid, self.app_name(component))

    def existing_app(self, component: Component, *, doing: str) -> Resource:
        """The app, or DeployError saying what could not be done without it."""
        app = self.app(component)
        if app is None:
            raise DeployError(f"{self.app_name(component)} does not exist in {self.where}: {doing}")
        return app

    def instances(self, component: Component) -> int:
        """How many web instances the params want of the app."""
        return self.settings.registry.instances if component == "registry" else self.settings.proxy.instances

    def wait_serving(self, app: Resource, *, since: str | None = None) -> Health:
        """Every instance RUNNING through the params' settle window, within their deploy timeout."""
        return wait_serving(self.cc, app, timeout=self.cf.deploy_timeout_seconds,
                            settle=self.cf.health_settle_seconds, since=since, crash_budget=self.cf.crash_budget)

    def verify_serving(self, app: Resource) -> str:
        """What a verify step reports: the droplet that serves and for how long every instance ran."""
        health = self.wait_serving(app)
        droplet = self.cc.current_droplet(app)
        return (f"droplet {droplet['guid'] if droplet else None} serves: {health.running}/{health.desired} "
                f"instance(s) RUNNING for {self.cf.health_settle_seconds:g} s")
