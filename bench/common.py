"""Shared set-up for the benchmarks: a private local stack on free ports in a temporary folder."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import local_test_settings, settings_as_parameters  # noqa: E402

__all__ = ["ROOT", "local_test_settings", "machine", "settings_as_parameters", "summary"]


def summary(samples: list[float]) -> str:
    return (f"median {statistics.median(samples):.3f} s, min {min(samples):.3f} s, "
            f"max {max(samples):.3f} s over {len(samples)}")


def machine() -> dict[str, object]:
    """What the figures were measured on, written beside them."""
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
