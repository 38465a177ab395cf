"""Shared fixtures. One local stack per test run for every test whose settings allow it (SeaweedFS
alone takes about 580 MB), deployed by the deploy runbook itself under papermill, on free ports in a
temporary folder, and torn down by the teardown runbook at the end with every process it ever started
checked gone by PID. Tests that break it put it back (see `shared_stack`). Settings only the proxy's
config holds are deployed onto it and back (tests/integration/test_resilience.py); a settings variant
the shared stack cannot take gets one stack of its own per module (`tests.support.tracked_stack`).

Markers (declared in pyproject.toml) split the suite for `make test-fast` (no local stack, no kernel):
  integration  needs a local stack (the shared one or its own): real SeaweedFS, registry, nginx
  notebooks    runs a notebook in a Jupyter kernel (papermill, JupyterLab)
  nbmake       the nbmake pass: every notebook with its defaults, in a throwaway copy of the project
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import papermill as pm
import pytest

from registry_mirror.platforms.local import LocalPlatform
from tests.support import local_test_settings, observe_stacks, settings_as_parameters, tracked_stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def deployed_notebook(stack_dir: Path) -> Iterator[tuple[LocalPlatform, Path]]:
    settings = local_test_settings(str(stack_dir / "state"))
    out = stack_dir / "deploy.ipynb"

    def deploy(_: LocalPlatform) -> None:
        pm.execute_notebook(str(ROOT / "notebooks/deploy.ipynb"), str(out),
                            parameters=settings_as_parameters(settings), cwd=str(ROOT / "notebooks"),
                            progress_bar=False, kernel_name="python3")

    def teardown(_: LocalPlatform) -> None:
        # The teardown runbook, confirmed, is what stops the stack; down() only mops up after a failure.
        pm.execute_notebook(str(ROOT / "notebooks/teardown.ipynb"), str(stack_dir / "teardown.ipynb"),
                            parameters={**settings_as_parameters(settings), "confirm_teardown": True},
                            cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")

    with tracked_stack(settings, deploy=deploy, teardown=teardown) as platform:
        yield platform, out


@pytest.fixture(scope="session")
def stack(deployed_notebook: tuple[LocalPlatform, Path]) -> LocalPlatform:
    return deployed_notebook[0]


@pytest.fixture
def shared_stack(stack: LocalPlatform) -> Iterator[LocalPlatform]:
    """The session's stack for a test that breaks it on purpose and puts it back. If the test left it
    broken (it failed half-way), the stack is deployed again so the tests after it start from a
    running stack, and this test errors saying so."""
    from registry_mirror.platforms.local import faults

    yield stack
    left = faults.active_faults(stack)
    condition = stack.status().condition
    if left or not condition.startswith("RUNNING"):
        if left:
            faults.undo(stack)
        stack.deploy(replace_mirrors=True)
        pytest.fail(f"the test left the shared stack broken ({condition}; faults {left}); deployed it again")


@pytest.fixture(autouse=True)
def _observe_stacks() -> Iterator[None]:
    """After each test, note every process the open test stacks run (checked gone by PID at teardown)."""
    yield
    observe_stacks()


STACK_FIXTURES = {"stack", "deployed_notebook", "shared_stack"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The split of `make test-fast` is by marker: a test that takes the local stack must say so."""
    unmarked = [item.nodeid for item in items
                if STACK_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("integration")]
    if unmarked:
        raise pytest.UsageError("these tests use the local stack but are not marked integration: "
                                + ", ".join(unmarked))
    # Under pytest-xdist (`make test` runs two workers) every user of the session's stack goes to one
    # worker, so the stack is deployed once and its tests keep their order; the rest share the other.
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("session-stack"))


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
