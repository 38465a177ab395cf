"""The bad-day numbers of issue 11, in one run on a private stack, each against a baseline of the same run.

1. Stampede: 16 cold clients of one new tag, through the public endpoint (proxy caches, locks) against
   the same 16 sent straight to one mirror instance: upstream manifest GETs, and GETs per blob.
2. Cached pull latency (an API pull of a cached image, every digest verified) with Docker Hub hung
   (SIGSTOP) against healthy, once the tag's window has passed (so the hung case is a stale answer).
3. Manifest latency under load: p50/p99 of tag-manifest GETs from 8 threads through the public
   endpoint against straight to a mirror's socket.
Results go to bench/results/resilience.json with the machine description.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, local_test_settings, machine  # noqa: F401 - also puts the project on sys.path

from registry_mirror.access_logs import log_size, read_registry_log, upstream_manifest_gets
from registry_mirror.checks.client import MANIFEST_ACCEPT, pull_over_api
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.state import HUB_PARTS, StackState
from registry_mirror.processes import wait_until
from registry_mirror.sample_images import SampleImage, seed_registry
from registry_mirror.unix_http import unix_request

CLIENTS = 16
ALLOWED = "127.0.0.10"
TAG_SECONDS = 3


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-resilience-") as tmp:
        base = local_test_settings(str(Path(tmp) / "state"))
        settings = base.model_copy(update={"proxy": base.proxy.model_copy(update={"tag_cache_seconds": TAG_SECONDS})})
        stack = LocalPlatform(settings, settings.load_security_rules())
        try:
            stack.deploy()
            results = {"machine": machine(), "stampede": stampede(stack), "hung_upstream": hung(stack),
                       "manifest_latency": latency(stack)}
        finally:
            for record in StackState.load(stack.paths.state_file).processes.values():
                if record.alive():
                    os.kill(record.pid, signal.SIGCONT)
            stack.down()
    out = ROOT / "bench" / "results" / "resilience.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


def fresh(stack: LocalPlatform) -> tuple[str, str]:
    image = SampleImage(f"library/bench-{secrets.token_hex(4)}", "1", layer_sizes=(262144, 4096))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    return image.repository, image.tag


def upstream_counts(stack: LocalPlatform, offset: int, repository: str) -> dict[str, int]:
    hub = read_registry_log(stack.paths.logs / "hub.log", offset=offset)
    mine = hub[hub["uri"].str.contains(repository, regex=False)]
    blobs = mine[(mine["method"] == "GET") & mine["uri"].str.contains("/blobs/")]
    return {"manifest_gets": int(len(upstream_manifest_gets(mine))),
            "max_gets_per_blob": int(blobs.groupby("uri").size().max()) if len(blobs) else 0,
            "blob_gets": int(len(blobs))}


def herd(fetch) -> list[str]:  # type: ignore[no-untyped-def]
    barrier, errors = threading.Barrier(CLIENTS), []

    def one() -> None:
        barrier.wait()
        try:
            fetch()
        except Exception as exc:  # noqa: BLE001 - counted, not raised
            errors.append(str(exc)[:200])

    threads = [threading.Thread(target=one) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def stampede(stack: LocalPlatform) -> dict[str, object]:
    url = f"http://{stack.endpoint}"
    repository, tag = fresh(stack)
    offset = log_size(stack.paths.logs / "hub.log")
    errors = herd(lambda: pull_over_api(url, client_from(ALLOWED), repository, tag))
    proxied = {**upstream_counts(stack, offset, repository), "errors": len(errors)}

    # Baseline: the same herd straight at one mirror instance (no proxy cache, no lock).
    repository, tag = fresh(stack)
    socket = str(stack.mirror_sockets()[0])
    offset = log_size(stack.paths.logs / "hub.log")

    def direct() -> None:
        manifest = unix_request(socket, "GET", f"/v2/{repository}/manifests/{tag}",
                                headers={"Accept": MANIFEST_ACCEPT}, timeout=120)
        body = json.loads(manifest.body)
        for blob in [body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]:
            unix_request(socket, "GET", f"/v2/{repository}/blobs/{blob}", timeout=120)

    errors = herd(direct)
    alone = {**upstream_counts(stack, offset, repository), "errors": len(errors)}
    return {"clients": CLIENTS, "through_public_endpoint": proxied, "one_mirror_instance_alone": alone}


def timed_pulls(url: str, repository: str, tag: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.monotonic()
        pull_over_api(url, client_from(ALLOWED), repository, tag)
        samples.append(time.monotonic() - start)
    return samples


def hung(stack: LocalPlatform) -> dict[str, object]:
    url = f"http://{stack.endpoint}"
    repository, tag = fresh(stack)
    pull_over_api(url, client_from(ALLOWED), repository, tag)
    healthy = timed_pulls(url, repository, tag, 20)
    state = StackState.load(stack.paths.state_file)
    hub = [state.processes[n] for n in HUB_PARTS]
    for record in hub:
        os.kill(record.pid, signal.SIGSTOP)
    try:
        # Once the tag's window has passed every answer is the stale copy.
        wait_until(lambda: client_from(ALLOWED).get(f"{url}/v2/{repository}/manifests/{tag}",
                                                    headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
                   .headers.get("X-Mirror-Cache") in ("STALE", "UPDATING"), timeout=60, what="a stale answer")
        hung_samples = timed_pulls(url, repository, tag, 20)
    finally:
        for record in hub:
            os.kill(record.pid, signal.SIGCONT)
    return {"pulls": 20, "healthy_p50_s": statistics.median(healthy), "hung_p50_s": statistics.median(hung_samples),
            "hung_max_s": max(hung_samples),
            "ratio_p50_hung_to_healthy": statistics.median(hung_samples) / statistics.median(healthy)}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1000 * ordered[len(ordered) // 2], "p99_ms": 1000 * ordered[int(len(ordered) * 0.99) - 1]}


def load(fetch, threads: int = 8, per_thread: int = 100) -> list[float]:  # type: ignore[no-untyped-def]
    samples: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        mine = []
        for _ in range(per_thread):
            start = time.monotonic()
            fetch()
            mine.append(time.monotonic() - start)
        with lock:
            samples.extend(mine)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return samples


def latency(stack: LocalPlatform) -> dict[str, object]:
    url = f"http://{stack.endpoint}"
    repository, tag = fresh(stack)
    pull_over_api(url, client_from(ALLOWED), repository, tag)
    session_local = threading.local()

    def through() -> None:
        if not hasattr(session_local, "s"):
            session_local.s = client_from(ALLOWED)
        resp = session_local.s.get(f"{url}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT},
                                   timeout=30)
        assert resp.status_code == 200

    socket = str(stack.mirror_sockets()[0])

    def direct() -> None:
        resp = unix_request(socket, "GET", f"/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT},
                            timeout=30)
        assert resp.status == 200

    proxied, alone = percentiles(load(through)), percentiles(load(direct))
    return {"threads": 8, "requests": 800, "through_public_endpoint": proxied, "straight_to_one_mirror": alone,
            "ratio_p50": proxied["p50_ms"] / alone["p50_ms"], "ratio_p99": proxied["p99_ms"] / alone["p99_ms"]}


if __name__ == "__main__":
    sys.exit(main())
