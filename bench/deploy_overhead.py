"""Cold deploy of the local stack: through papermill (the runbook) against the library called directly.

Both start the same processes from nothing (fresh state folder, free ports); the difference is what
the notebook machinery costs. Goal from issue 2: papermill overhead under 5 s.
Run: .venv/bin/python bench/deploy_overhead.py [rounds]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import papermill as pm

from common import ROOT, local_test_settings, settings_as_parameters, summary
from registry_mirror.platforms.local import LocalPlatform


def cold_direct(state: Path) -> float:
    settings = local_test_settings(str(state))
    platform = LocalPlatform(settings, settings.load_security_rules())
    start = time.monotonic()
    try:
        platform.deploy()
        from registry_mirror.platforms import verify_pull
        verify_pull(platform)
        return time.monotonic() - start
    finally:
        platform.down()


def cold_papermill(state: Path) -> float:
    settings = local_test_settings(str(state))
    platform = LocalPlatform(settings, settings.load_security_rules())
    start = time.monotonic()
    try:
        pm.execute_notebook(str(ROOT / "notebooks/deploy.ipynb"), str(state.parent / "out.ipynb"),
                            parameters=settings_as_parameters(settings), progress_bar=False,
                            cwd=str(ROOT / "notebooks"))
        return time.monotonic() - start
    finally:
        platform.down()


def main(rounds: int) -> None:
    direct, notebook = [], []
    for i in range(rounds):
        # Alternate the order so a warm page cache favours neither.
        for kind in (("direct", "papermill") if i % 2 == 0 else ("papermill", "direct")):
            with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
                state = Path(tmp) / "state"
                (direct if kind == "direct" else notebook).append(
                    cold_direct(state) if kind == "direct" else cold_papermill(state))
    import statistics
    d, n = statistics.median(direct), statistics.median(notebook)
    print(f"cold deploy + verification pull, library called directly: {summary(direct)}")
    print(f"cold deploy + verification pull, deploy.ipynb under papermill: {summary(notebook)}")
    print(f"papermill overhead: {n - d:.2f} s (goal < 5 s); ratio papermill/direct {n / d:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
