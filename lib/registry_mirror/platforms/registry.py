"""Platforms by name, as distribution registers its storage drivers: the only place that knows which
implementations exist. `platform_for` opens the one the parameters name."""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from ..errors import ParameterError
from ..parameters import Settings
from ..security_rules import SecurityRules
from .base import Platform

Factory = Callable[[Settings, SecurityRules], Platform]

# name -> "module:attribute" of its factory; imported on first use so that opening one platform
# never imports another's dependencies.
_FACTORIES: dict[str, str | Factory] = {
    "local": "registry_mirror.platforms.local:LocalPlatform",
    "cloudfoundry": "registry_mirror.platforms.cloudfoundry:CloudFoundryPlatform",
}


def register(name: str, factory: str | Factory) -> None:
    """Add a platform: `factory(settings, rules)` returns a `Platform`; a "module:attribute" string is
    imported when the platform is first opened."""
    _FACTORIES[name] = factory


def names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def platform_for(settings: Settings, rules: SecurityRules) -> Platform:
    try:
        factory = _FACTORIES[settings.platform]
    except KeyError:
        raise ParameterError(f"platform {settings.platform!r} is not one of {', '.join(_FACTORIES)}") from None
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(import_module(module), attribute)
    return factory(settings, rules)
