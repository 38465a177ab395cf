"""Retention at scale and under load, each against a baseline from the same run, on a private stack.

1. Pulls during an eviction of half the cache while 8 clients pull every image in a loop, straight
   from the mirror instances: failed pulls (goal 0) and the upstream fetches the eviction caused,
   with the rendered config (no blob descriptor cache) and, as the baseline, the same run with the
   registry's in-memory descriptor cache turned back on (the trap retention's design avoids).
2. The descriptor cache's cost: warm blob GETs from one instance, without the cache against with it.
3. Plan and apply on a bucket of BENCH_OBJECTS (default 100,000) objects laid out as images (tag,
   revision and layer links, manifests, configs, layers), against `rclone size` of the same bucket;
   objects deleted per second.
Results: bench/results/retention.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, local_test_settings, machine

from registry_mirror.access_logs import log_size, read_registry_log
from registry_mirror.analysis.cache_inventory import open_cache
from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.platforms.local import LocalPlatform, configs
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.processes import wait_until
from registry_mirror.retention.apply import apply_retention
from registry_mirror.retention.policy import RetentionPolicy
from registry_mirror.retention.runbook import plan_from_bucket
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.integration.test_retention import _get, _pull

OBJECTS = int(os.environ.get("BENCH_OBJECTS", "100000"))
PARTS = os.environ.get("BENCH_PARTS", "load,scale").split(",")  # either alone: load, scale
CLIENTS = 8
IMAGES = 24


def main() -> int:
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        results: dict[str, object] = {"machine": machine()}
        try:
            stack.deploy()
            if "load" in PARTS:
                results["eviction_no_descriptor_cache"] = eviction_under_load(stack, "off")
                results["blob_get_no_descriptor_cache"] = warm_blob_gets(stack)
                with descriptor_cache(stack):
                    results["eviction_descriptor_cache_baseline"] = eviction_under_load(stack, "on")
                    results["blob_get_descriptor_cache_baseline"] = warm_blob_gets(stack)
            if "scale" in PARTS:
                results["at_scale"] = at_scale(stack, rclone)
        finally:
            stack.down()
    out = ROOT / "bench" / "results" / "retention.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One part alone updates its own figures in the results file and keeps the other part's.
    kept = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**kept, **results}, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    return 0


class descriptor_cache:
    """The mirrors redeployed with `storage.cache.blobdescriptor: inmemory`, and back after."""

    def __init__(self, stack: LocalPlatform) -> None:
        self.stack = stack
        self.original = configs.registry_config

    def __enter__(self) -> None:
        def with_cache(*args, **kwargs):  # type: ignore[no-untyped-def]
            config = self.original(*args, **kwargs)
            config["storage"]["cache"] = {"blobdescriptor": "inmemory"}
            return config
        configs.registry_config = with_cache  # type: ignore[assignment]
        self.stack.deploy(replace_mirrors=True)

    def __exit__(self, *_: object) -> None:
        configs.registry_config = self.original  # type: ignore[assignment]
        self.stack.deploy(replace_mirrors=True)


def eviction_under_load(stack: LocalPlatform, label: str) -> dict[str, object]:
    images = [SampleImage(f"bench-{label}/img{i}", "1", layer_sizes=(0, 100_000)) for i in range(IMAGES)]
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), images)
    sockets = [str(s) for s in stack.mirror_sockets()]
    for image in images:
        _pull(sockets[0], image.repository, image.tag)
    cache = open_cache(stack.settings)
    # The last blob is stored after its client has it: wait until no upload is in flight.
    wait_until(lambda: not any("/_uploads/" in o["Key"] for o in cache.listing(f"docker/registry/v2/repositories/bench-{label}/")),
               timeout=30, what="the mirror to store what it fetched")
    others = sorted({r for r in plan_from_bucket(cache, RetentionPolicy()).inventory.objects["repository"].dropna()
                     if not r.startswith(f"bench-{label}/")})
    planned = plan_from_bucket(cache, RetentionPolicy(protect_days=0.0, pinned=others, grace_seconds=5.0))
    half = planned.plan.total_bytes - IMAGES // 2 * 100_000
    policy = RetentionPolicy(protect_days=0.0, pinned=others, grace_seconds=5.0, budget=f"{half / 1e3:.3f}K")
    plan = plan_from_bucket(cache, policy).plan
    hub_log = stack.paths.logs / "hub.log"
    hub_at = log_size(hub_log)
    done = threading.Event()
    counts = {"pulls": 0, "failed": 0}
    errors: list[str] = []

    def load(socket: str) -> None:
        while not done.is_set():
            for image in images:
                try:
                    _pull(socket, image.repository, image.tag)
                    counts["pulls"] += 1
                except AssertionError as failed:
                    counts["failed"] += 1
                    errors.append(str(failed)[:200])
    threads = [threading.Thread(target=load, args=(sockets[i % len(sockets)],)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    result = apply_retention(plan, cache, dry_run=False, confirm=True)
    time.sleep(5)  # the loop goes on after the eviction: stale beliefs show up here
    done.set()
    for thread in threads:
        thread.join()
    upstream = read_registry_log(hub_log, offset=hub_at)
    mine = upstream[upstream["uri"].str.startswith(f"/v2/bench-{label}/")]
    return {"descriptor_cache": label, "images_evicted": sum(1 for e in plan.evictions if e.image.startswith("bench")),
            "images": IMAGES, "clients": CLIENTS, "pulls": counts["pulls"], "failed_pulls": counts["failed"],
            "first_errors": errors[:3], "upstream_manifest_gets": int(((mine["method"] == "GET") &
                                                                     mine["uri"].str.contains("/manifests/")).sum()),
            "upstream_blob_gets": int(((mine["method"] == "GET") & mine["uri"].str.contains("/blobs/")).sum()),
            "seconds_under_load": time.monotonic() - started, "apply": result.summary()}


def warm_blob_gets(stack: LocalPlatform, rounds: int = 300) -> dict[str, object]:
    image = SampleImage("bench-warm/img", "1", layer_sizes=(100_000,))
    seeded = seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])[0]
    socket = str(stack.mirror_sockets()[0])
    manifest = json.loads(_get(socket, f"/v2/{image.repository}/manifests/{seeded.digest}",
                               "application/vnd.docker.distribution.manifest.v2+json"))
    blob = manifest["layers"][0]["digest"]
    _get(socket, f"/v2/{image.repository}/blobs/{blob}", "*/*")
    samples = []
    for _ in range(rounds):
        started = time.monotonic()
        _get(socket, f"/v2/{image.repository}/blobs/{blob}", "*/*")
        samples.append(time.monotonic() - started)
    return {"rounds": rounds, "median_s": statistics.median(samples), "p90_s": sorted(samples)[int(rounds * 0.9)]}


def at_scale(stack: LocalPlatform, rclone: str) -> dict[str, object]:
    assert stack.settings.storage is not None and stack.settings.local is not None
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    endpoint = f"http://{stack.settings.local.address}:{stack.settings.local.s3_port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=secrets.s3_access_key.reveal(),
                          aws_secret_access_key=secrets.s3_secret_key.reveal(), region_name="us-east-1")
    bucket = stack.settings.storage.bucket
    images = OBJECTS // 10
    started = time.monotonic()
    fill_images(client, bucket, images)
    filled = time.monotonic() - started
    env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
           "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
           "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": secrets.s3_access_key.reveal(),
           "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": secrets.s3_secret_key.reveal()}
    started = time.monotonic()
    size = subprocess.run([rclone, "size", "--json", f"bench:{bucket}"], env=env, capture_output=True, text=True,
                          check=True, timeout=1800)
    rclone_seconds = time.monotonic() - started
    cache = open_cache(stack.settings)
    started = time.monotonic()
    # Every image over a 1 KB budget: the plan reads every tag link and manifest, the apply deletes all.
    planned = plan_from_bucket(cache, RetentionPolicy(budget="1K", protect_days=0.0, grace_seconds=0.0))
    plan_seconds = time.monotonic() - started
    started = time.monotonic()
    result = apply_retention(planned.plan, cache, dry_run=False, confirm=True)
    apply_seconds = time.monotonic() - started
    deleted = result.links_deleted + result.blobs_deleted
    return {"objects": json.loads(size.stdout)["count"], "images": len(planned.layout.images), "fill_seconds": filled,
            "rclone_size_seconds": rclone_seconds, "plan_seconds": plan_seconds,
            "plan_over_rclone": plan_seconds / rclone_seconds, "apply_seconds": apply_seconds,
            "objects_deleted": deleted, "deleted_per_second": deleted / apply_seconds}


def fill_images(client, bucket: str, count: int) -> None:  # type: ignore[no-untyped-def]
    """`count` images of 10 objects each: tag current and index links, revision link, manifest,
    config, two layers and their three layer links."""
    base = "docker/registry/v2/"

    def digest_of(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body)

    def image(i: int) -> None:
        repo = f"{base}repositories/scale/img{i % 500}"
        layers = [f"layer {i} {n}".encode() * 20 for n in range(2)]
        config = f'{{"image": {i}}}'.encode()
        blobs = [config, *layers]
        manifest = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + digest_of(config)},
                               "layers": [{"digest": "sha256:" + digest_of(b)} for b in layers]}).encode()
        for blob in [*blobs, manifest]:
            d = digest_of(blob)
            put(f"{base}blobs/sha256/{d[:2]}/{d}/data", blob)
        for blob in blobs:
            d = digest_of(blob)
            put(f"{repo}/_layers/sha256/{d}/link", f"sha256:{d}".encode())
        m = digest_of(manifest)
        put(f"{repo}/_manifests/revisions/sha256/{m}/link", f"sha256:{m}".encode())
        put(f"{repo}/_manifests/tags/t{i}/index/sha256/{m}/link", f"sha256:{m}".encode())
        put(f"{repo}/_manifests/tags/t{i}/current/link", f"sha256:{m}".encode())

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(image, range(count)))


if __name__ == "__main__":
    sys.exit(main())
