"""In CI a skipped test fails the run (tests/conftest.py): prove it with a test that skips on request."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = "REGISTRY_MIRROR_SKIP_PROBE"


def test_skip_probe() -> None:
    if os.environ.get(PROBE):
        pytest.skip("the probe asked to skip")


@pytest.mark.parametrize("ci,code,says", [("true", 1, "counts as a failure"), ("", 0, "1 skipped")])
def test_a_skip_fails_in_ci_and_only_there(ci: str, code: int, says: str) -> None:
    env = {**os.environ, "CI": ci, PROBE: "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-rs",
                           f"{__file__}::test_skip_probe"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == code, done.stdout[-2000:]
    assert says in done.stdout
