"""incident_triage.ipynb's calls against every fault of the drill library, on the shared stack (each
fault undone after): the walk must name the fault's layer and cause, and where a remedy exists, fix it
behind the gate and prove it by walking the chain again.

The walk runs in-process, through the same library calls in the same order as the notebook's cells
(`triage` below); the notebooks themselves run under papermill once each here: incident_triage.ipynb
headless and in JupyterLab (same verdict, no secret in it) and with a bad parameter (non-zero exit),
and drill.ipynb injecting a fault that this process then finds and undoes.
"""
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
from registry_mirror.errors import VerificationError
from registry_mirror.platforms.local import faults
from registry_mirror.incidents.drill import open_drill
from registry_mirror.incidents.remedies import apply_remedy
from registry_mirror.incidents.runbook import check_again, final_verdict, require_fixed, start_triage, write_results
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.support import (chromium, client, first_screen, make_lab, run_all_cells, settings_as_parameters,
                           throwaway_copy)

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
def probe_cached(stack: LocalPlatform) -> None:
    """The probe image in the cache, as on any mirror that has served a day."""
    pull_over_api(f"http://{stack.endpoint}", client("127.0.0.10"), *PROBE)


@pytest.fixture
def drill_stack(shared_stack: LocalPlatform, probe_cached: None) -> Iterator[LocalPlatform]:
    yield shared_stack


def triage(stack: LocalPlatform, folder: Path, *, apply: bool = False, dry_run: bool = False, remedy: str = "",
           scale_to: int = 0, probe_image: str = "library/hello:latest") -> str:
    """incident_triage.ipynb with these options, in-process: its cells' calls in order, with its defaults
    for every other option; returns what its cells print (each layer, the diagnosis, the remedy, the
    verdict after it, the files written). A remedy that did not fix the chain raises, as the notebook's
    cell does; neither the printed text nor the files hold a secret of the stack."""
    walk = start_triage(stack.settings, remedy=remedy, scale_to=scale_to, probe_image=probe_image)
    printed = [repr(layer) for layer in walk.walk()]
    diagnosis = walk.diagnose()
    printed.append(diagnosis.verdict())
    result = apply_remedy(walk.target, diagnosis, remedy=remedy, confirm=apply, dry_run=dry_run, scale_to=scale_to)
    printed.append(repr(result))
    again = check_again(walk, result)
    if again is not None:
        printed.extend(layer.verdict for layer in again.layers)
    printed.append(final_verdict(diagnosis, result, again))
    assert not any(value in "\n".join(printed) for value in _secret_values(stack))
    require_fixed(result, again)
    written = write_results(folder / "out", walk, diagnosis, result, again)
    printed.extend(str(path) for path in written)
    for path in written:
        assert not any(value in path.read_text() for value in _secret_values(stack)), path.name
    return "\n".join(printed)


def test_every_fault_is_diagnosed_and_a_remedy_behind_the_gate_fixes_it(drill_stack: LocalPlatform,
                                                                         tmp_path: Path) -> None:
    assert set(EXPECTED) == set(faults.FAULTS)
    missed = []
    for name, (layer, cause, fixable) in EXPECTED.items():
        faults.inject(drill_stack, name)
        try:
            text = triage(drill_stack, tmp_path / name)
            if layer not in text or cause not in text:
                missed.append(f"{name}: {_verdict(text)}")
                continue
            if fixable:
                try:
                    fixed = triage(drill_stack, tmp_path / f"{name}-remedy", apply=True)
                except VerificationError as exc:  # the notebook's cell fails the run the same way
                    missed.append(f"{name} (remedy): {exc}")
                    continue
                if "FIXED by" not in fixed:
                    missed.append(f"{name} (remedy): {_verdict(fixed)}")
            else:
                assert "No remedy from here" in text
        finally:
            faults.undo(drill_stack)
    assert not missed, "\n".join(missed)
    assert "HEALTHY: every layer answers" in triage(drill_stack, tmp_path / "after")


def test_a_router_whose_master_is_gone_is_named_although_its_orphaned_worker_answers(
        drill_stack: LocalPlatform, tmp_path: Path) -> None:
    """Triage reads the process facts `make status` reads: the router's nginx master SIGKILLed leaves a
    worker serving the public port, and the stack DEGRADED; the redeploy remedy brings it back."""
    import os
    import signal

    from registry_mirror.platforms.local.state import StackState
    from registry_mirror.processes import wait_until

    router = StackState.load(drill_stack.paths.state_file).processes["router"]
    os.kill(router.pid, signal.SIGKILL)
    try:
        wait_until(lambda: not router.alive(), timeout=10, what="the router's master to go")
        assert drill_stack.status().condition.startswith("DEGRADED: not running: router")
        assert client("127.0.0.10").get(f"http://{drill_stack.endpoint}/v2/", timeout=10).status_code == 200
        text = triage(drill_stack, tmp_path / "found")
        assert "BROKEN LAYER: router. CAUSE: not running: router" in text and "Remedy: redeploy" in text
        assert "FIXED by redeploy" in triage(drill_stack, tmp_path / "fixed", apply=True)
    finally:
        if not drill_stack.status().condition.startswith("RUNNING"):
            drill_stack.deploy()
    assert drill_stack.status().condition.startswith("RUNNING")


def test_a_probe_image_the_upstream_lacks_is_a_parameter_error_and_telemetry_noise_is_no_error(
        drill_stack: LocalPlatform, tmp_path: Path) -> None:
    """A mistyped probe image: the upstream answers 404 for it, so no layer is blamed and no remedy
    offered. And on a healthy stack the recent errors hold no trace-export failure (registry 3.x logs
    one every 10 s when nothing collects traces)."""
    text = triage(drill_stack, tmp_path / "typo", probe_image="library/helo:latest")
    verdict = _verdict(text)
    assert verdict.startswith("PARAMETER ERROR: probe_image: the upstream has no library/helo:latest (HEAD "
                              "answered 404)"), verdict
    assert "BROKEN LAYER" not in text and "Remedy:" not in text
    healthy = triage(drill_stack, tmp_path / "healthy")
    assert "HEALTHY: every layer answers" in healthy
    assert "traces export" not in healthy and "4318" not in healthy


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
        text = triage(drill_stack, tmp_path)
        assert "STILL WORKS: cached images still pull through the mirror" in text
        assert "images and tags not yet cached fail" in text
    finally:
        faults.undo(drill_stack)


def test_the_gate_fails_closed_and_a_dry_run_changes_nothing(drill_stack: LocalPlatform, tmp_path: Path) -> None:
    faults.inject(drill_stack, "mirror-dead")
    try:
        closed = triage(drill_stack, tmp_path / "closed")
        assert "NOT APPLIED: replace-mirrors: the gate is closed" in closed
        planned = triage(drill_stack, tmp_path / "dry", dry_run=True)
        assert "DRY RUN: replace-mirrors" in planned
        # Nothing was replaced: the walk still finds the dead instance.
        assert "not running" in _verdict(triage(drill_stack, tmp_path / "still"))
        records = sorted((tmp_path / "still" / "out").glob("triage_diagnosis-*.json"))
        assert len(records) == 1
        summary = json.loads(records[0].read_text())
        assert summary["environment"] == "local" and summary["versions"]["registry"] and summary["time"]
        assert summary["remedy"]["applied"] is False and summary["diagnosis"]["remedy"] == "replace-mirrors"
    finally:
        faults.undo(drill_stack)


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


def run_papermill(stack: LocalPlatform, folder: Path, notebook: str = "incident_triage",
                  **options: object) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    defaults = {"output_dir": str(folder / "out")} if notebook == "incident_triage" else {}
    params.write_text(yaml.safe_dump({**settings_as_parameters(stack.settings), **defaults, **options}))
    return subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
                           str(ROOT / f"notebooks/{notebook}.ipynb"), str(folder / f"{notebook}.ipynb"), "-f",
                           str(params)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def notebook_triage(stack: LocalPlatform, folder: Path) -> str:
    """incident_triage.ipynb under papermill, as the pipeline runs it: exit 0, no secret in the executed
    notebook; returns what its cells printed."""
    result = run_papermill(stack, folder)
    assert result.returncode == 0, result.stderr[-3000:]
    executed = folder / "incident_triage.ipynb"
    assert not any(v in executed.read_text() for v in _secret_values(stack))
    out = nbformat.read(executed, as_version=4)
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in out.cells for o in c.get("outputs", []))


def _secret_values(stack: LocalPlatform) -> list[str]:
    return [v for v in json.loads(stack.paths.secrets_file.read_text()).values() if isinstance(v, str) and len(v) >= 12]


def _verdict(text: str) -> str:
    heads = ("BROKEN LAYER", "HEALTHY", "FIXED", "NOT FIXED", "PARAMETER ERROR")
    return next((line for line in text.splitlines() if line.startswith(heads)), text[-500:])


@pytest.mark.notebooks
def test_the_drill_notebook_injects_and_undoes_what_triage_then_finds(drill_stack: LocalPlatform,
                                                                      tmp_path: Path) -> None:
    """drill.ipynb under papermill injects (its state crosses to this process through faults.json); its
    other two modes run here through `open_drill`, the call the notebook makes."""
    def drill(fault: str = "") -> object:
        return open_drill(drill_stack.settings, fault=fault)

    assert drill("proxy-denies-everyone").inject(dry_run=True).startswith("DRY RUN")  # inject is off by default
    assert faults.active_faults(drill_stack) == []
    run = run_papermill(drill_stack, tmp_path / "inject", "drill", fault="proxy-denies-everyone", inject=True)
    try:
        assert run.returncode == 0, run.stderr[-3000:]
        # Headless, the verdict line and the next runbook reach papermill's terminal.
        assert "drill.ipynb: FAULT INJECTED: proxy-denies-everyone" in run.stderr and "incident_triage" in run.stderr
        assert faults.active_faults(drill_stack) == ["proxy-denies-everyone"]
        screen = first_screen(tmp_path / "inject" / "drill.ipynb", tmp_path / "screen")
        assert "FAULT INJECTED: proxy-denies-everyone" in screen and "incident_triage" in screen
        assert "BROKEN LAYER: security proxy." in triage(drill_stack, tmp_path / "found")
    finally:
        drill().undo(dry_run=False)
    assert faults.active_faults(drill_stack) == []
    assert "HEALTHY" in triage(drill_stack, tmp_path / "healthy")


@pytest.mark.notebooks
def test_an_operator_runs_the_prepared_notebook_in_jupyterlab_and_sees_the_same_verdict(
        drill_stack: LocalPlatform, tmp_path: Path) -> None:
    """`make lab`'s notebook (papermill --prepare-only), opened in JupyterLab in headless Chromium, run
    with the Run menu's "Run All Cells", as an operator would; the page shows what the notebook says
    under papermill, which says what the walk in-process says."""
    faults.inject(drill_stack, "mirror-dead")
    try:
        expected = _verdict(notebook_triage(drill_stack, tmp_path / "headless"))
        assert expected.startswith("BROKEN LAYER: mirror instance")
        # Its HTML export (no code) opens on that verdict.
        assert expected[:60] in first_screen(tmp_path / "headless" / "incident_triage.ipynb", tmp_path / "screen")
        assert expected == _verdict(triage(drill_stack, tmp_path / "in-process"))
        params = tmp_path / "lab-params.yaml"
        params.write_text(yaml.safe_dump(settings_as_parameters(drill_stack.settings)))
        # `make lab` in a throwaway copy of the project: its lab/ folder is the copy's, not the developer's.
        project = throwaway_copy(ROOT, tmp_path / "project")
        with make_lab(project, f"LAB_PARAMS={params}", f"LAB_ARGS=-p output_dir {tmp_path / 'headless' / 'out'}") as url, \
                chromium(tmp_path / "chromium") as browser:
            assert "/lab/tree/incident_triage.ipynb?token=" in url
            page = run_all_cells(browser, url, until="triage_diagnosis-")
        assert expected in page
        # The headless run and this one wrote into one folder: two records, neither overwritten.
        assert len(list((tmp_path / "headless" / "out").glob("triage_diagnosis-*.json"))) == 2
    finally:
        faults.undo(drill_stack)


def test_scale_mirrors_runs_more_instances_until_the_next_deploy(drill_stack: LocalPlatform, tmp_path: Path) -> None:
    from registry_mirror.platforms.local.state import StackState

    text = triage(drill_stack, tmp_path / "scale", remedy="scale-mirrors", scale_to=3, apply=True)
    assert "APPLIED scale-mirrors: the same checks pass again" in text
    state = StackState.load(drill_stack.paths.state_file)
    assert len(state.mirrors) == 3 and all(state.running(n) for n in state.mirrors)
    drill_stack.deploy()  # the params say 2: the next deploy brings that back
    assert len(StackState.load(drill_stack.paths.state_file).mirrors) == drill_stack.settings.registry.instances
