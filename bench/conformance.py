"""OCI conformance of the public endpoint against a bare registry of the same release, side by side.

A private stack; the bare registry is the release production pins started from the production mirror
manifest's env on a TCP port (tests/integration/cf_mirror_app.py: the Cloud Foundry mirror app as the
CF rendering reaches it), on the same S3 and Docker Hub stand-in. For each conformance sample the suite
runs read-only against both; prints every test whose status differs or is not Pass, and the counts.
Results go to bench/results/conformance.json with the machine description.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import ROOT, local_test_settings, machine  # noqa: F401 - also puts the project on sys.path

from registry_mirror.conformance import SAMPLES, run_conformance
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.sample_images import SampleReferrer, seed_referrers, seed_registry
from tests.integration.cf_mirror_app import cf_chain


def main() -> int:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-conformance-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        try:
            stack.deploy()
            with cf_chain(stack) as chain:
                bare = chain.mirror_url.removeprefix("http://")
                for name, images in SAMPLES.items():
                    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), list(images))
                    seed_referrers(stack.hub_url, hub_seeder(stack.paths.secrets),
                                   [SampleReferrer(images[0], "application/vnd.example.sig")])
                    endpoint, _ = run_conformance(stack.endpoint, images, Path(tmp) / f"{name}-endpoint")
                    alone, _ = run_conformance(bare, images, Path(tmp) / f"{name}-bare")
                    results[name] = {test: {"endpoint": endpoint.get(test), "bare": alone.get(test)}
                                     for test in sorted(set(endpoint) | set(alone))}
        finally:
            stack.down()
    out = ROOT / "bench" / "results" / "conformance.json"
    out.write_text(json.dumps({"machine": machine(), "release": settings.registry.version, "samples": results},
                              indent=2))
    for name, tests in results.items():
        counts = {side: sum(t[side] == "Pass" for t in tests.values()) for side in ("endpoint", "bare")}
        failing = {side: sum(t[side] in ("FAIL", "Error") for t in tests.values()) for side in ("endpoint", "bare")}
        print(f"{name}: pass endpoint {counts['endpoint']} / bare {counts['bare']}; "
              f"fail endpoint {failing['endpoint']} / bare {failing['bare']}")
        for test, sides in tests.items():
            if sides["endpoint"] != sides["bare"] or sides["endpoint"] not in ("Pass", "Disabled"):
                print(f"  {test}: endpoint {sides['endpoint']}, bare {sides['bare']}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
