"""Runbooks run headless, as Concourse runs them: papermill with parameters, exit codes asserted.

On the local platform each runbook runs under papermill once in the suite (deploy and teardown here, by
the session's stack; the others beside the tests of what they do); a scenario that only needs another
value of a parameter calls what the notebook's cells call, in-process (those tests carry no marker and
run in `make test-fast`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from registry_mirror.errors import ParameterError
from registry_mirror.parameters import runbook_parameters
from registry_mirror.platforms import check_component, platform_for, verify_pull
from registry_mirror.platforms.local import LocalPlatform
from tests.support import first_screen, local_test_settings, settings_as_parameters

ROOT = Path(__file__).resolve().parents[2]
PAPERMILL = [sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar"]
DEPLOY_OPTIONS = {"dry_run": bool, "component": str}  # deploy.ipynb's runbook options


def outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(str(out.get("text", "")) + json.dumps(out.get("data", {})) + str(out.get("evalue", "")))
    return "\n".join(texts)


@pytest.mark.integration
@pytest.mark.notebooks
def test_deploy_notebook_deployed_and_verified(deployed_notebook: tuple[LocalPlatform, Path]) -> None:
    _, executed = deployed_notebook
    text = outputs(executed)
    assert "PREFLIGHT OK" in text
    assert "DEPLOYED: endpoint" in text
    assert "PULLED docker.io/library/hello:latest" in text


@pytest.mark.integration
@pytest.mark.notebooks
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


def deploy_cells(values: dict[str, Any]) -> str:
    """deploy.ipynb's cells, in-process, with these parameter values: validate, choose the platform,
    render, preflight, deploy, verify the pull; returns what the cells show."""
    settings, options = runbook_parameters(values, notebook="deploy.ipynb", options=DEPLOY_OPTIONS)
    check_component(options["component"], settings)
    target = platform_for(settings, settings.load_security_rules())
    shown = [target.rendered_configs()["registry config (per instance)"]]
    preflight = target.preflight()
    shown.append(repr(preflight))
    preflight.raise_for_failures()
    shown.append(repr(target.deploy(dry_run=options["dry_run"], component=options["component"])))
    pull = verify_pull(target, dry_run=options["dry_run"])
    shown.append(pull.verdict() if pull else "dry run: no pull")
    return "\n".join(shown)


def test_dry_run_plans_everything_and_starts_nothing(tmp_path: Path) -> None:
    settings = local_test_settings(str(tmp_path / "state"))
    text = deploy_cells({**settings_as_parameters(settings), "dry_run": True, "component": "all"})
    assert "DRY RUN:" in text and "start SeaweedFS" in text and "dry run: no pull" in text
    assert not (tmp_path / "state").exists(), "a dry run wrote state"


BAD_PARAMETERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "instances": (lambda p: p["registry"].update(instances=0), "registry.instances"),
    "unknown": (lambda p: p.update(colour="blue"), "unknown parameter 'colour'"),
    "cidr": (lambda p: p["proxy"]["security_rules"]["allow"].append("10.0.0.0/33"), "proxy.security_rules.allow[3]"),
    "component": (lambda p: p.update(component="everything"), "component"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameters_fail_the_cells_before_anything_starts(tmp_path: Path, case: str) -> None:
    mutate, expected = BAD_PARAMETERS[case]
    values = {**settings_as_parameters(local_test_settings(str(tmp_path / "state"))), "dry_run": False,
              "component": "all"}
    mutate(values)
    with pytest.raises(ParameterError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        deploy_cells(values)
    assert not (tmp_path / "state").exists(), "a failed validation created state"


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook,mutate,expected", [
    # deploy.ipynb: the component is checked in the second cell, after the rules are loaded.
    ("deploy", BAD_PARAMETERS["component"][0], BAD_PARAMETERS["component"][1]),
    ("incident_triage", lambda p: p.update(remedy="reboot-everything"),
     "parameter 'remedy' must be one of redeploy, redeploy-proxy"),
], ids=["deploy", "incident_triage"])
def test_bad_parameters_fail_the_run_before_anything_starts(tmp_path: Path, notebook: str, mutate,
                                                            expected: str) -> None:
    """Under papermill a refused parameter is a non-zero exit with the reason, and nothing is created."""
    values = {**settings_as_parameters(local_test_settings(str(tmp_path / "state")))}
    mutate(values)
    if notebook == "incident_triage":
        values["output_dir"] = str(tmp_path / "out")
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(values))
    out = tmp_path / "out.ipynb"
    result = subprocess.run([*PAPERMILL, str(ROOT / f"notebooks/{notebook}.ipynb"), str(out), "-f", str(params)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert "ParameterError" in result.stderr and expected in result.stderr
    # Headless (--log-level WARNING --no-progress-bar) the one sentence comes before any traceback.
    sentence = result.stderr.find("FAILED: ")
    assert 0 <= sentence < result.stderr.find("Traceback") and expected in result.stderr[sentence:].splitlines()[0]
    assert not (tmp_path / "state").exists(), "a failed validation created state"
    assert not (tmp_path / "out").exists(), "a failed validation wrote results"


@pytest.mark.notebooks
def test_an_empty_params_file_is_refused_naming_it_instead_of_running_the_local_defaults(tmp_path: Path) -> None:
    """`papermill deploy.ipynb out.ipynb -f empty.yaml` injects nothing: the notebook must not run on its
    parameters cell's local defaults. (-p dry_run True: where the refusal is missing, the run plans the
    default stack instead of starting it.)"""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = subprocess.run([*PAPERMILL, str(ROOT / "notebooks/deploy.ipynb"), str(tmp_path / "out.ipynb"),
                             "-f", str(empty), "-p", "dry_run", "True"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0, result.stdout[-2000:]
    # Refused by papermill's CLI itself (the package's I/O handler), or from the kernel where no handler runs.
    assert f"params file {empty}: is empty" in result.stderr


@pytest.mark.integration
def test_the_deployed_runbook_opens_on_its_verdict(deployed_notebook: tuple[LocalPlatform, Path],
                                                   tmp_path: Path) -> None:
    """The session's deploy.ipynb, executed by papermill, as its HTML export's first screen."""
    _, executed = deployed_notebook
    screen = first_screen(executed, tmp_path)
    assert "DEPLOYED: endpoint" in screen or "UNCHANGED:" in screen
    assert "verify_policies.ipynb" in screen and "local-hub-only-password" not in screen


@pytest.mark.integration
def test_teardown_without_confirmation_stops_nothing(deployed_notebook: tuple[LocalPlatform, Path],
                                                     tmp_path: Path) -> None:
    """teardown.ipynb under papermill with its default (confirm_teardown False): a dry run that opens on
    its verdict; the confirmed run is the session stack's own teardown."""
    import papermill as pm

    platform, _ = deployed_notebook
    before = platform.running_processes()
    out = tmp_path / "teardown.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/teardown.ipynb"), str(out), cwd=str(ROOT / "notebooks"),
                        parameters={**settings_as_parameters(platform.settings), "confirm_teardown": False},
                        progress_bar=False, kernel_name="python3")
    assert "DRY RUN" in first_screen(out, tmp_path / "screen")
    assert {n: r.pid for n, r in platform.running_processes().items()} == {n: r.pid for n, r in before.items()}
