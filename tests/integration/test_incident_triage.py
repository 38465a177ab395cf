"""incident_triage.ipynb against every fault of the drill library, on a local stack of its own: it must
name the fault's layer and cause, and where a remedy exists, fix it behind the gate and prove it by
walking the chain again."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
import requests
import yaml

from registry_mirror.checks.client import PullFailed, pull_over_api
from registry_mirror.platforms.local import faults
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.support import (
    client, jupyterlab, local_test_settings, private_stack, run_all_cells, settings_as_parameters,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PROBE = ("library/hello", "latest")

# fault -> (broken layer the verdict names, words of the cause, whether a remedy from here fixes it)
EXPECTED = {
    "upstream-down": ("BROKEN LAYER: upstream.", "Docker Hub does not answer", False),
    "upstream-rate-limited": ("BROKEN LAYER: upstream.", "pull limit is used up", False),
    "s3-down": ("BROKEN LAYER: S3.", "the S3 API does not answer", True),
    "s3-wrong-credentials": ("BROKEN LAYER: mirror instances.", "S3 rejects the credentials they run with", True),
    "bucket-deleted": ("BROKEN LAYER: S3.", "the cache's bucket does not exist", True),
    "mirror-dead": ("BROKEN LAYER: mirror instance mirror-", "not running", True),
    "mirrors-fail-at-start": ("BROKEN LAYER: mirror instances.", "because Docker Hub is unreachable", False),
    "mirror-slow": ("BROKEN LAYER: mirror instance mirror-", "answers slowly", True),
    "proxy-denies-everyone": ("BROKEN LAYER: security proxy.", "refuses allowed clients (403)", True),
    "proxy-cannot-reach-mirror": ("BROKEN LAYER: security proxy -> mirror.", "cannot reach the mirror instances",
                                  True),
}


@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    settings = local_test_settings(str(tmp_path_factory.mktemp("triage") / "state"))
    with private_stack(settings) as stack:
        # The probe image in the cache, as on any mirror that has served a day.
        pull_over_api(f"http://{stack.endpoint}", client("127.0.0.10"), *PROBE)
        yield stack


def test_every_fault_is_diagnosed_and_a_remedy_behind_the_gate_fixes_it(drill_stack: LocalPlatform,
                                                                         tmp_path: Path) -> None:
    assert set(EXPECTED) == set(faults.FAULTS)
    missed = []
    for name, (layer, cause, fixable) in EXPECTED.items():
        faults.inject(drill_stack, name)
        try:
            text = run_triage(drill_stack, tmp_path / name)
            if layer not in text or cause not in text:
                missed.append(f"{name}: {_verdict(text)}")
                continue
            if fixable:
                fixed = run_triage(drill_stack, tmp_path / f"{name}-remedy", apply_remedy=True)
                if "FIXED by" not in fixed:
                    missed.append(f"{name} (remedy): {_verdict(fixed)}")
            else:
                assert "No remedy from here" in text
        finally:
            faults.undo(drill_stack)
    assert not missed, "\n".join(missed)
    assert "HEALTHY: every layer answers" in run_triage(drill_stack, tmp_path / "after")


@pytest.mark.parametrize("fault", ["upstream-down", "upstream-rate-limited"])
def test_cached_images_still_pull_while_docker_hub_fails_and_the_notebook_says_so(
        drill_stack: LocalPlatform, tmp_path: Path, fault: str) -> None:
    fresh = SampleImage(f"library/uncached-{secrets.token_hex(4)}", "1", layer_sizes=(2048,))
    seed_registry(drill_stack.hub_url, hub_seeder(drill_stack.paths.secrets), [fresh])
    faults.inject(drill_stack, fault)
    try:
        url, session = f"http://{drill_stack.endpoint}", client("127.0.0.10")
        pulled = pull_over_api(url, session, *PROBE)
        assert pulled.blobs >= 2
        with pytest.raises(PullFailed):  # what the mirror never saw cannot come from Docker Hub now
            pull_over_api(url, session, fresh.repository, fresh.tag)
        text = run_triage(drill_stack, tmp_path)
        assert "STILL WORKS: cached images still pull through the mirror" in text
        assert "images and tags not yet cached fail" in text
    finally:
        faults.undo(drill_stack)


def test_the_gate_fails_closed_and_a_dry_run_changes_nothing(drill_stack: LocalPlatform, tmp_path: Path) -> None:
    faults.inject(drill_stack, "mirror-dead")
    try:
        closed = run_triage(drill_stack, tmp_path / "closed")
        assert "NOT APPLIED: replace-mirrors: the gate is closed" in closed
        planned = run_triage(drill_stack, tmp_path / "dry", dry_run=True)
        assert "DRY RUN: replace-mirrors" in planned
        # Nothing was replaced: the walk still finds the dead instance.
        assert "not running" in _verdict(run_triage(drill_stack, tmp_path / "still"))
        summary = json.loads((tmp_path / "still" / "out" / "triage_diagnosis.json").read_text())
        assert summary["remedy"]["applied"] is False and summary["diagnosis"]["remedy"] == "replace-mirrors"
    finally:
        faults.undo(drill_stack)


def test_bad_parameters_are_refused_before_anything_is_looked_at(drill_stack: LocalPlatform, tmp_path: Path) -> None:
    result = run_papermill(drill_stack, tmp_path, remedy="reboot-everything")
    assert result.returncode != 0
    assert "parameter 'remedy' must be one of redeploy, redeploy-proxy" in result.stderr


def test_faults_refuse_unknown_names_and_a_second_fault(drill_stack: LocalPlatform) -> None:
    with pytest.raises(ValueError, match="unknown fault 'disk-full'"):
        faults.inject(drill_stack, "disk-full")
    faults.inject(drill_stack, "mirror-dead")
    try:
        with pytest.raises(ValueError, match="mirror-dead is already injected"):
            faults.inject(drill_stack, "s3-down")
        assert faults.active_faults(drill_stack) == ["mirror-dead"]
    finally:
        faults.undo(drill_stack)
    assert faults.active_faults(drill_stack) == []
    assert requests.get(f"http://{drill_stack.endpoint}/v2/", timeout=10).status_code in (200, 403)


def run_triage(stack: LocalPlatform, folder: Path, **options: object) -> str:
    result = run_papermill(stack, folder, **options)
    assert result.returncode == 0, result.stderr[-3000:]
    out = nbformat.read(folder / "triage.ipynb", as_version=4)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in out.cells for o in c.get("outputs", []))
    secret_values = [v for v in json.loads(stack.paths.secrets_file.read_text()).values()
                     if isinstance(v, str) and len(v) >= 12]
    assert not any(v in (folder / "triage.ipynb").read_text() for v in secret_values)
    return text


def run_papermill(stack: LocalPlatform, folder: Path, **options: object) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({**settings_as_parameters(stack.settings), "output_dir": str(folder / "out"),
                                      **options}))
    return subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
                           str(ROOT / "notebooks/incident_triage.ipynb"), str(folder / "triage.ipynb"), "-f",
                           str(params)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _verdict(text: str) -> str:
    return next((line for line in text.splitlines() if line.startswith(("BROKEN LAYER", "HEALTHY", "FIXED",
                                                                          "NOT FIXED"))), text[-500:])


def test_the_drill_notebook_injects_and_undoes_what_triage_then_finds(drill_stack: LocalPlatform,
                                                                      tmp_path: Path) -> None:
    def drill(**options: object) -> None:
        params = tmp_path / "drill-params.yaml"
        params.write_text(yaml.safe_dump({**settings_as_parameters(drill_stack.settings), **options}))
        run = subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
                              str(ROOT / "notebooks/drill.ipynb"), str(tmp_path / "drill.ipynb"), "-f", str(params)],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-3000:]

    drill(fault="proxy-denies-everyone")  # inject is off by default: nothing changes
    assert faults.active_faults(drill_stack) == []
    drill(fault="proxy-denies-everyone", inject=True)
    try:
        assert faults.active_faults(drill_stack) == ["proxy-denies-everyone"]
        assert "BROKEN LAYER: security proxy." in run_triage(drill_stack, tmp_path / "found")
    finally:
        drill(undo=True)
    assert faults.active_faults(drill_stack) == []
    assert "HEALTHY" in run_triage(drill_stack, tmp_path / "healthy")


def test_an_operator_runs_the_prepared_notebook_in_jupyterlab_and_sees_the_same_verdict(
        drill_stack: LocalPlatform, tmp_path: Path) -> None:
    """`make lab`'s notebook (papermill --prepare-only), opened in JupyterLab in headless Chromium, run
    with the Run menu's "Run All Cells", as an operator would; the page shows papermill's verdict."""
    faults.inject(drill_stack, "mirror-dead")
    try:
        expected = _verdict(run_triage(drill_stack, tmp_path / "headless"))
        assert expected.startswith("BROKEN LAYER: mirror instance")
        params = tmp_path / "lab-params.yaml"
        params.write_text(yaml.safe_dump(settings_as_parameters(drill_stack.settings)))
        prepared = subprocess.run(["make", "-s", "lab-prepare", f"LAB_PARAMS={params}", f"LAB_DIR={tmp_path / 'lab'}",
                                   f"LAB_ARGS=-p output_dir {tmp_path / 'lab-out'}"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=600)
        assert prepared.returncode == 0, prepared.stderr[-2000:]
        with jupyterlab(tmp_path / "lab") as (url, browser):
            page = run_all_cells(browser, f"{url}/lab/tree/incident_triage.ipynb", until="triage_diagnosis.json")
        assert expected in page
        assert (tmp_path / "lab-out" / "triage_diagnosis.json").exists()
    finally:
        faults.undo(drill_stack)


def test_scale_mirrors_runs_more_instances_until_the_next_deploy(drill_stack: LocalPlatform, tmp_path: Path) -> None:
    from registry_mirror.platforms.local.state import StackState

    text = run_triage(drill_stack, tmp_path / "scale", remedy="scale-mirrors", scale_to=3, apply_remedy=True)
    assert "APPLIED scale-mirrors: the same checks pass again" in text
    state = StackState.load(drill_stack.paths.state_file)
    assert len(state.mirrors) == 3 and all(state.running(n) for n in state.mirrors)
    drill_stack.deploy()  # the params say 2: the next deploy brings that back
    assert len(StackState.load(drill_stack.paths.state_file).mirrors) == drill_stack.settings.registry.instances
