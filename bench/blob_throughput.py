"""A 100 MB cached blob: through the public endpoint (router -> proxy -> mirror) against straight
from one mirror instance's unix socket, in one run, with the same client (curl) for both.
Measured twice: with the proxy's blob cache off (every hit streams from S3 through both nginx hops)
and on (the default: a hit is served by the proxy from disk). Goal from issue 2: ratio <= 1.15.
Run: .venv/bin/python bench/blob_throughput.py [rounds]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import local_test_settings, summary
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.sample_images import SampleImage, build_image, seed_registry

BIG = SampleImage("library/big-layer", "latest", layer_sizes=(100 * 1024 * 1024,))


def curl(args: list[str]) -> float:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{http_code} %{size_download}",
                          *args], capture_output=True, text=True, check=True, timeout=300).stdout.split()
    seconds, code, size = float(out[0]), out[1], int(out[2])
    if code != "200" or size < 100 * 1024 * 1024:
        raise RuntimeError(f"unexpected answer {code}, {size} bytes")
    return seconds


def main(rounds: int) -> None:
    for label, size in (("proxy blob cache off", "0"), ("proxy blob cache on", "2G")):
        measure(label, size, rounds)


def measure(label: str, cache_size: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-blob-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        settings = settings.model_copy(update={"proxy": settings.proxy.model_copy(
            update={"blob_cache_size": cache_size})})
        platform = LocalPlatform(settings, settings.load_security_rules())
        try:
            platform.deploy()
            seed_registry(platform.hub_url, hub_seeder(platform.paths.secrets), [BIG])
            layer = build_image(BIG).platform_manifests[0].layer_digests[0]
            path = f"/v2/library/big-layer/blobs/{layer}"
            public = [f"http://{platform.endpoint}{path}"]
            sock = platform.mirror_sockets()[0]
            direct = ["--unix-socket", str(sock), f"http://mirror{path}"]
            # Warm the cache (the first pull fetches from upstream and stores in S3), then the page
            # cache and both instances, so the rounds compare the paths and not the first reads.
            for _ in range(3):
                curl(public)
                for other in platform.mirror_sockets():
                    curl(["--unix-socket", str(other), f"http://mirror{path}"])
            through, straight = [], []
            for i in range(rounds):
                pair = (("public", public), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("public", public))
                for kind, args in pair:
                    (through if kind == "public" else straight).append(curl(args))
            t, s = statistics.median(through), statistics.median(straight)
            # Rounds are paired (one of each, order alternating): the paired ratio cancels drift.
            paired = statistics.median(a / b for a, b in zip(through, straight))
            print(f"[{label}] 100 MiB cached blob via the public endpoint: {summary(through)}")
            print(f"[{label}] 100 MiB cached blob straight from a mirror instance's socket: {summary(straight)}")
            print(f"[{label}] ratio public/direct: {t / s:.3f} of medians, {paired:.3f} median of paired "
                  "rounds (goal <= 1.15)")
        finally:
            platform.down()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21)
