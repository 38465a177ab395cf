"""The Platform seam: every registered platform offers the whole protocol with the same signatures,
and nothing outside the registry asks which kind of platform it holds."""
from __future__ import annotations

import inspect
import re
from importlib import import_module
from pathlib import Path

import pytest

from registry_mirror.errors import ParameterError
from registry_mirror.parameters import load_params_file
from registry_mirror.platforms import base, registry

LIB = Path(__file__).resolve().parents[2] / "lib" / "registry_mirror"
PROTOCOL = [name for name, member in vars(base.Platform).items()
            if not name.startswith("_") and (callable(member) or isinstance(member, property))]
# The parameters model says which section each platform needs (schema, not dispatch); the registry is
# the one place that maps a name to an implementation.
ALLOWED = {LIB / "parameters.py", LIB / "platforms" / "registry.py"}
DISPATCH = re.compile(r"isinstance\([^)]*(LocalPlatform|CloudFoundryPlatform)"
                      r"|\bplatform\s*[!=]=\s*[\"']"
                      r"|\.(platform|name)\s*[!=]=\s*[\"'](local|cloudfoundry)[\"']"
                      r"|[\"'](local|cloudfoundry)[\"']\s*[!=]=\s*\w*\.?(platform|name)\b"
                      r"|\bhasattr\([^)]*(condition|paths)")


def _implementation(name: str) -> type:
    module, _, attribute = str(registry._FACTORIES[name]).partition(":")
    return getattr(import_module(module), attribute)


@pytest.mark.parametrize("name", registry.names())
def test_every_platform_offers_the_whole_protocol_with_its_signatures(name: str) -> None:
    implementation = _implementation(name)
    assert implementation.name == name
    for member in PROTOCOL:
        declared = getattr(base.Platform, member)
        offered = getattr(implementation, member, None)
        assert offered is not None, f"{name} lacks {member}"
        if isinstance(declared, property):
            assert isinstance(offered, property), f"{name}.{member} must be a property"
            continue
        want = [(p.name, p.kind, p.default) for p in inspect.signature(declared).parameters.values()]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(offered).parameters.values()]
        assert got == want, f"{name}.{member}{inspect.signature(offered)} differs from the protocol's"


def test_no_dispatch_on_the_platform_kind_outside_the_registry() -> None:
    found = []
    for path in sorted(LIB.rglob("*.py")):
        if path in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DISPATCH.search(line):
                found.append(f"{path.relative_to(LIB)}:{number}: {line.strip()}")
    assert not found, "dispatch on the platform kind outside platforms/registry.py:\n" + "\n".join(found)


def test_the_dispatch_pattern_catches_what_it_forbids() -> None:
    for line in ('if isinstance(target, LocalPlatform):', 'if settings.platform == "local":',
                 "local = platform.name == 'cloudfoundry'", 'print(s if hasattr(s, "condition") else s)'):
        assert DISPATCH.search(line), line


def test_an_unknown_platform_name_is_refused_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_params_file("params/local.yaml")
    monkeypatch.setattr(registry, "_FACTORIES", {"cloudfoundry": registry._FACTORIES["cloudfoundry"]})
    with pytest.raises(ParameterError, match="platform 'local' is not one of cloudfoundry"):
        registry.platform_for(settings, settings.load_security_rules())


def test_a_registered_platform_is_opened_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_params_file("params/local.yaml")
    opened = []
    monkeypatch.setitem(registry._FACTORIES, "local", lambda s, r: opened.append((s, r)) or "a platform")
    assert registry.platform_for(settings, settings.load_security_rules()) == "a platform"
    assert opened and opened[0][0] is settings
