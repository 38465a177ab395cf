"""The lifecycle soak: `down` then `deploy` on kept state, N times, with a pull after each, on a private stack.

tests/integration/test_lifecycle.py proves each path once (down, deploy again, the cache survives);
this repeats the cycle for confidence and reports failures out of N, with each cycle's times against
the same run's first, cold deploy (the baseline: a warm start on kept state should cost less).
Run: cd bench && ../.venv/bin/python lifecycle.py [cycles]   (default 10)
Results: bench/results/lifecycle.json.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, local_test_settings, machine

from registry_mirror.client_pull import pull_with_skopeo
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.state import StackState
from registry_mirror.processes import gone

IMAGE = "docker.io/library/hello:latest"


def main(cycles: int) -> int:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        try:
            started = time.monotonic()
            stack.deploy()
            cold = time.monotonic() - started
            digest = pull(stack)
            for cycle in range(cycles):
                rows.append(one_cycle(stack, cycle, digest))
                print(f"cycle {cycle + 1:3d}/{cycles}: {rows[-1]['result']}")
        finally:
            stack.down()
    failed = [r for r in rows if r["result"] != "ok"]
    timed = [r for r in rows if r["result"] == "ok"]
    results = {
        "machine": machine(), "cycles": cycles, "failed": len(failed), "failures": [r["result"] for r in failed],
        "cold_deploy_s": round(cold, 2),
        "down_p50_s": _median(timed, "down_s"), "deploy_p50_s": _median(timed, "deploy_s"),
        "pull_p50_s": _median(timed, "pull_s"),
        "ratio_warm_deploy_to_cold": round(_median(timed, "deploy_s") / cold, 2) if timed else None,
        "rows": rows,
    }
    out = ROOT / "bench" / "results" / "lifecycle.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}, indent=2))
    print(f"{len(failed)} failed of {cycles} cycles; written to {out}")
    return 1 if failed else 0


def one_cycle(stack: LocalPlatform, cycle: int, digest: str) -> dict[str, object]:
    """down (everything stops, nothing recorded runs), deploy, pull the same digest; a failure is counted,
    not raised, and the stack is deployed again for the next cycle."""
    row: dict[str, object] = {"cycle": cycle}
    try:
        records = StackState.load(stack.paths.state_file).processes
        started = time.monotonic()
        stack.down()
        row["down_s"] = round(time.monotonic() - started, 2)
        condition = stack.status().condition
        if not condition.startswith("STOPPED"):
            raise AssertionError(f"after down: {condition}")
        if not all(gone(r) for r in records.values()):
            raise AssertionError("a process of the stack survived down")
        started = time.monotonic()
        stack.deploy()
        row["deploy_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        pulled = pull(stack)
        row["pull_s"] = round(time.monotonic() - started, 2)
        if pulled != digest:
            raise AssertionError(f"pulled {pulled}, cached {digest}")
        row["result"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failed cycle is counted, not just the first
        row["result"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        stack.deploy()
    return row


def pull(stack: LocalPlatform) -> str:
    return pull_with_skopeo(IMAGE, registries_conf=stack.client_configs().registries_conf, timeout=60).digest


def _median(rows: list[dict[str, object]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if key in r]  # type: ignore[arg-type]
    return round(statistics.median(values), 2) if values else None


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
