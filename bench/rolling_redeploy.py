"""Rolling redeploys under load: N replacements of every mirror instance (each a start, a health check,
and two proxy reloads per instance) while 8 clients loop over a multi-arch image's manifests and blobs.

tests/integration/test_local_stack.py proves one redeploy under two clients loses no request; this
repeats it for confidence and reports failed requests out of all requests sent, against the same
clients' requests in an equal time with no redeploy running (the baseline of the same run).
Run: cd bench && ../.venv/bin/python rolling_redeploy.py [redeploys]   (default 10)
Results: bench/results/rolling_redeploy.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, local_test_settings, machine

from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.sample_images import SAMPLE_IMAGES, build_image
from tests.support import MANIFEST_TYPES

CLIENTS = [f"127.0.0.{10 + i % 2}" for i in range(8)]  # the two allowed loopback addresses


def main(redeploys: int) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-rolling-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        try:
            stack.deploy()
            paths = image_paths()
            started = time.monotonic()
            failed, redeploy_seconds = under_load(stack, paths, lambda: [redeploy(stack) for _ in range(redeploys)])
            loaded = time.monotonic() - started
            # The baseline: the same clients for the same span of time, nothing redeployed.
            quiet, _ = under_load(stack, paths, lambda: time.sleep(loaded))
        finally:
            stack.down()
    results = {"machine": machine(), "redeploys": redeploys, "clients": len(CLIENTS),
               "during_redeploys": failed, "baseline_no_redeploy": quiet,
               "redeploy_p50_s": round(sorted(redeploy_seconds)[len(redeploy_seconds) // 2], 2) if redeploy_seconds else None}
    out = ROOT / "bench" / "results" / "rolling_redeploy.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"{failed['failed']} failed of {failed['requests']} requests during {redeploys} rolling redeploys "
          f"({quiet['failed']} of {quiet['requests']} without); written to {out}")
    return 1 if failed["failed"] else 0


def image_paths() -> list[str]:
    built = build_image(next(i for i in SAMPLE_IMAGES if i.repository == "library/multiarch"))
    child = built.platform_manifests[0]
    return ["/v2/library/multiarch/manifests/latest", f"/v2/library/multiarch/manifests/{child.digest}",
            *(f"/v2/library/multiarch/blobs/{d}" for d in child.layer_digests)]


def redeploy(stack: LocalPlatform) -> float:
    started = time.monotonic()
    report = stack.deploy(replace_mirrors=True)
    if not report.ok:
        raise RuntimeError(f"redeploy failed: {report.verdict()}")
    return time.monotonic() - started


def under_load(stack: LocalPlatform, paths: list[str], work):  # type: ignore[no-untyped-def]
    """Run `work` while every client loops over `paths`; returns the request counts and what work returned."""
    counts = {"requests": 0, "failed": 0}
    failures: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def loop(source: str) -> None:
        session = client_from(source)
        while not stop.is_set():
            for path in paths:
                try:
                    ok = session.get(f"http://{stack.endpoint}{path}", headers={"Accept": MANIFEST_TYPES},
                                     timeout=30).status_code == 200
                    reason = "" if ok else f"{path}: not 200"
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    ok, reason = False, f"{path}: {exc}"
                with lock:
                    counts["requests"] += 1
                    if not ok:
                        counts["failed"] += 1
                        failures.append(reason[:200])

    threads = [threading.Thread(target=loop, args=(source,)) for source in CLIENTS]
    for thread in threads:
        thread.start()
    try:
        result = work()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return {**counts, "first_failures": failures[:5]}, result


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
