"""How long incident_triage.ipynb takes to name each fault of the drill library on the local stack.

For every fault: inject it into a private stack, time the walk and the diagnosis in the library
(what an operator waits for cell by cell), and the whole notebook under papermill (kernel start
included: what the pipeline waits for); check the verdict names the fault's layer; undo.
Anchor from issue 14: under 60 s of wall time per fault. Results: bench/results/triage.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, local_test_settings, settings_as_parameters

from registry_mirror.checks.client import pull_over_api
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local import faults
from registry_mirror.incidents.triage import Triage
from registry_mirror.platforms.local import LocalPlatform

LAYER_WORDS = {"upstream": "upstream", "s3": "S3", "mirror": "mirror instance", "proxy": "security proxy"}


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        params = Path(tmp) / "params.yaml"
        params.write_text(yaml.safe_dump({**settings_as_parameters(settings), "output_dir": f"{tmp}/out"}))
        try:
            stack.deploy()
            pull_over_api(f"http://{stack.endpoint}", client_from("127.0.0.10"), "library/hello", "latest")
            for name, fault in [("none", None), *faults.FAULTS.items()]:
                if fault is not None:
                    faults.inject(stack, name)
                try:
                    started = time.monotonic()
                    triage = Triage(stack, lambda: stack.triage_evidence(probe_image="library/hello:latest", recent_minutes=15,
                                                                    stuck_minutes=10))
                    triage.walk()
                    diagnosis = triage.diagnose()
                    library = time.monotonic() - started
                    started = time.monotonic()
                    run = subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING",
                                          "--no-progress-bar", str(ROOT / "notebooks/incident_triage.ipynb"),
                                          f"{tmp}/triage-{name}.ipynb", "-f", str(params)],
                                         capture_output=True, text=True, timeout=600, cwd=ROOT)
                    notebook = time.monotonic() - started
                finally:
                    if fault is not None:
                        faults.undo(stack)
                named = diagnosis.healthy if fault is None else LAYER_WORDS[fault.layer] in diagnosis.layer
                rows.append({"fault": name, "library_seconds": round(library, 2),
                             "notebook_seconds": round(notebook, 2), "notebook_ok": run.returncode == 0,
                             "named_layer": named, "verdict": diagnosis.verdict()[:160]})
                print(f"{name:28s} library {library:5.1f} s  notebook {notebook:5.1f} s  "
                      f"{'named' if named else 'MISSED'}: {diagnosis.layer or 'healthy'}")
        finally:
            stack.down()
    results = {"faults": rows, "max_library_seconds": max(r["library_seconds"] for r in rows),
               "max_notebook_seconds": max(r["notebook_seconds"] for r in rows),
               "all_named": all(r["named_layer"] for r in rows), "anchor": "under 60 s of wall time per fault",
               "cpus": os.cpu_count()}
    out = ROOT / "bench" / "results" / "triage.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "faults"}, indent=2))
    return 0 if results["all_named"] else 1


if __name__ == "__main__":
    sys.exit(main())
