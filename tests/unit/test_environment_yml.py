"""environment.yml (conda/mamba users) lists exactly what pyproject.toml declares, with the same
version ranges; conda cannot be installed here, so this test is what keeps the two in agreement."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
# What conda needs that is not a Python dependency of the package.
CONDA_ONLY = {"python", "pip"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    out: dict[str, SpecifierSet] = {}
    for line in declared:
        req = Requirement(line)
        name = _normalise(req.name)
        assert name not in out, f"{name} declared twice in pyproject.toml"
        assert not req.marker and not req.extras and not req.url, f"{line}: extend this test for markers/extras"
        out[name] = req.specifier
    return out


def _conda_spec(entry: str) -> tuple[str, SpecifierSet]:
    """'name>=1,<2' (conda match spec, written PEP 440 style here) -> (name, specifiers)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*", entry)
    assert match, f"cannot read dependency {entry!r}"
    name, spec = match.groups()
    assert " " not in spec and "=" != spec[:1], f"{entry!r}: write ranges as >=a,<b (pip and conda agree on those)"
    return _normalise(name), SpecifierSet(spec)


def _environment() -> tuple[dict[str, SpecifierSet], dict[str, SpecifierSet], dict[str, SpecifierSet]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, SpecifierSet] = {}
    pip: dict[str, SpecifierSet] = {}
    extra: dict[str, SpecifierSet] = {}
    pip_sections = 0
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            assert list(entry) == ["pip"], f"unexpected section {entry!r}"
            pip_sections += 1
            for line in entry["pip"]:
                req = Requirement(line)
                name = _normalise(req.name)
                assert name not in pip and name not in conda, f"{name} listed twice"
                pip[name] = req.specifier
            continue
        name, spec = _conda_spec(entry)
        target = extra if name in CONDA_ONLY else conda
        assert name not in target, f"{name} listed twice"
        target[name] = spec
    assert pip_sections <= 1
    return conda, pip, extra


def test_environment_yml_lists_exactly_the_pyproject_dependencies() -> None:
    declared = _pyproject()
    conda, pip, _ = _environment()
    assert not set(conda) & set(pip), "a package is in both the conda and the pip section"
    listed = {**conda, **pip}
    assert sorted(set(declared) - set(listed)) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(set(listed) - set(declared)) == [], "in environment.yml but not in pyproject.toml"
    for name, spec in declared.items():
        assert listed[name] == spec, f"{name}: pyproject.toml {spec} vs environment.yml {listed[name]}"


def test_environment_yml_python_matches_requires_python() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    _, pip, extra = _environment()
    assert "pip" in extra or not pip, "a pip section needs pip in the conda dependencies"
    assert extra.get("python") == SpecifierSet(project["requires-python"])


def test_environment_yml_uses_conda_forge() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    assert env["name"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]


@pytest.mark.parametrize(("entry", "name", "spec"), [
    ("nbclient>=0.10,<0.12", "nbclient", ">=0.10,<0.12"),
    ("PyYAML >=6.0,<7", "pyyaml", ">=6.0,<7"),
    ("cloudfoundry_client>=1.38,<2", "cloudfoundry-client", ">=1.38,<2"),
])
def test_conda_spec_reader(entry: str, name: str, spec: str) -> None:
    """The comparison is only as good as the parsing; and a changed range must not compare equal."""
    parsed_name, parsed = _conda_spec(entry)
    assert parsed_name == name and parsed == SpecifierSet(spec)
    assert parsed != SpecifierSet(spec.replace("<", "<=", 1))
