"""Shared set-up for the benchmarks: a private local stack on free ports in a temporary folder."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import local_test_settings, settings_as_parameters  # noqa: E402

__all__ = ["ROOT", "local_test_settings", "settings_as_parameters", "summary"]


def summary(samples: list[float]) -> str:
    return (f"median {statistics.median(samples):.3f} s, min {min(samples):.3f} s, "
            f"max {max(samples):.3f} s over {len(samples)}")
