"""Shared fixtures. One local stack per test run (SeaweedFS alone takes about 580 MB), deployed by the
deploy runbook itself under papermill, on free ports in a temporary folder, and torn down at the end
with every process it started checked gone by PID."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import papermill as pm
import pytest

from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.processes import ProcessRecord
from tests.support import local_test_settings, settings_as_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def deployed_notebook(stack_dir: Path) -> Iterator[tuple[LocalPlatform, Path]]:
    settings = local_test_settings(str(stack_dir / "state"))
    platform = LocalPlatform(settings, settings.load_security_rules())
    out = stack_dir / "deploy.ipynb"
    started: dict[str, ProcessRecord] = {}
    try:
        pm.execute_notebook(str(ROOT / "notebooks/deploy.ipynb"), str(out),
                            parameters=settings_as_parameters(settings), cwd=str(ROOT / "notebooks"),
                            progress_bar=False, kernel_name="python3")
        started = platform.running_processes()
        yield platform, out
    finally:
        started.update(platform.running_processes())
        try:
            # The teardown runbook, confirmed, is what stops the stack; down() only mops up after a failure.
            pm.execute_notebook(str(ROOT / "notebooks/teardown.ipynb"), str(stack_dir / "teardown.ipynb"),
                                parameters={**settings_as_parameters(settings), "confirm_teardown": True},
                                cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
        finally:
            platform.down()
        left = [f"{r.name} (pid {r.pid})" for r in started.values() if r.alive()]
        assert not left, f"processes left running after teardown: {left}"


@pytest.fixture(scope="session")
def stack(deployed_notebook: tuple[LocalPlatform, Path]) -> LocalPlatform:
    return deployed_notebook[0]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI a skipped test is a failure: a missing tool or contract must fail loudly, not pass quietly."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"
