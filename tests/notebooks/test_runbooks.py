"""Runbooks run headless, as Concourse runs them: papermill with parameters, exit codes asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from registry_mirror.platforms.local import LocalPlatform
from tests.support import local_test_settings, settings_as_parameters

pytestmark = pytest.mark.notebooks
ROOT = Path(__file__).resolve().parents[2]
PAPERMILL = [sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar"]


def outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(str(out.get("text", "")) + json.dumps(out.get("data", {})) + str(out.get("evalue", "")))
    return "\n".join(texts)


def test_deploy_notebook_deployed_and_verified(deployed_notebook: tuple[LocalPlatform, Path]) -> None:
    _, executed = deployed_notebook
    text = outputs(executed)
    assert "PREFLIGHT OK" in text
    assert "DEPLOYED: endpoint" in text
    assert "PULLED docker.io/library/hello:latest" in text


def test_executed_notebook_holds_no_generated_secret(deployed_notebook: tuple[LocalPlatform, Path]) -> None:
    platform, executed = deployed_notebook
    secrets = json.loads((platform.paths.secrets_file).read_text())
    raw = executed.read_text()
    for value in secrets.values():
        assert value not in raw
    for log in platform.paths.logs.glob("*.log"):
        content = log.read_text(errors="replace")
        for value in secrets.values():
            assert value not in content, f"{log.name} leaks a stack secret"


def test_dry_run_plans_everything_and_starts_nothing(tmp_path: Path) -> None:
    settings = local_test_settings(str(tmp_path / "state"))
    out = tmp_path / "plan.ipynb"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**settings_as_parameters(settings), "dry_run": True}))
    result = subprocess.run([*PAPERMILL, str(ROOT / "notebooks/deploy.ipynb"), str(out), "-f", str(params)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    text = outputs(out)
    assert "DRY RUN:" in text and "start SeaweedFS" in text and "dry run: no pull" in text
    assert not (tmp_path / "state").exists(), "a dry run wrote state"


@pytest.mark.parametrize("mutate,expected", [
    (lambda p: p["registry"].update(instances=0), "registry.instances"),
    (lambda p: p.update(colour="blue"), "unknown parameter 'colour'"),
    (lambda p: p["proxy"]["security_rules"]["allow"].append("10.0.0.0/33"), "proxy.security_rules.allow[3]"),
    (lambda p: p.update(component="everything"), "component"),
])
def test_bad_parameters_fail_the_run_before_anything_starts(tmp_path: Path, mutate, expected: str) -> None:
    settings = local_test_settings(str(tmp_path / "state"))
    values = {**settings_as_parameters(settings)}
    mutate(values)
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(values))
    out = tmp_path / "out.ipynb"
    result = subprocess.run([*PAPERMILL, str(ROOT / "notebooks/deploy.ipynb"), str(out), "-f", str(params)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert "ParameterError" in result.stderr and expected in result.stderr
    assert not (tmp_path / "state").exists(), "a failed validation created state"


def test_teardown_without_confirmation_stops_nothing(deployed_notebook: tuple[LocalPlatform, Path],
                                                     tmp_path: Path) -> None:
    platform, _ = deployed_notebook
    before = platform.running_processes()
    out = tmp_path / "teardown.ipynb"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings_as_parameters(platform.settings)))
    result = subprocess.run([*PAPERMILL, str(ROOT / "notebooks/teardown.ipynb"), str(out), "-f", str(params)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DRY RUN" in outputs(out)
    assert {n: r.pid for n, r in platform.running_processes().items()} == {n: r.pid for n, r in before.items()}
