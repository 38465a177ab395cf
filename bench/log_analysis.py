"""pull_savings' log reading against goaccess (Debian) on the same generated file, side by side.

Generates N proxy log lines in this project's extended format (default 5,000,000, about 190 bytes
each), then times, each in its own process under /usr/bin/time -v, goaccess with the matching log
format and registry_mirror.analysis.pull_savings. Prints and writes the wall-time ratio and both
peak memories (bench/results/log_analysis.json). Anchor from issue 13: at most 0.25x goaccess's time
and less peak memory.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401 - puts the project on sys.path

LINES = int(os.environ.get("BENCH_LOG_LINES", "5000000"))
GOACCESS_FORMAT = 'NginxLog "%h, %^" "%r" %s %b client=%^ rt=%T urt=%^ ua="%^" cache=%^ t=%dT%t+%^'


def generate(path: Path, lines: int) -> None:
    rng = random.Random(13)
    images = [f"library/image{i}" for i in range(300)]
    caches = ["HIT", "HIT", "HIT", "MISS", "STALE", "-"]
    start = time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, 0))
    with open(path, "w", buffering=1 << 22) as out:
        batch = []
        for i in range(lines):
            image = rng.choice(images)
            kind = rng.random()
            if kind < 0.5:
                request, size = f"GET /v2/{image}/manifests/latest HTTP/1.1", 1500
            elif kind < 0.6:
                request, size = f"GET /v2/{image}/manifests/sha256:{rng.getrandbits(256):064x} HTTP/1.1", 1500
            else:
                request, size = f"GET /v2/{image}/blobs/sha256:{rng.getrandbits(256):064x} HTTP/1.1", rng.randrange(1 << 24)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + i * 0.5))
            batch.append(f'NginxLog "10.1.{rng.randrange(256)}.{rng.randrange(256)}, 10.0.0.7" "{request}" 200 {size} '
                         f'client=10.1.2.3 rt=0.012 urt=0.010 ua="10.255.0.9:5000" cache={rng.choice(caches)} '
                         f't={stamp}+00:00\n')
            if len(batch) == 10000:
                out.writelines(batch)
                batch.clear()
        out.writelines(batch)


def timed(argv: list[str], cwd: Path | None = None) -> dict[str, float]:
    result = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr[-1500:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    assert wall and rss, result.stderr[-800:]
    hours = float(wall.group(1) or 0)
    seconds = hours * 3600 + float(wall.group(2)) * 60 + float(wall.group(3))
    return {"seconds": seconds, "peak_memory_mb": int(rss.group(1)) / 1024}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        log = Path(tmp) / "proxy.log"
        started = time.monotonic()
        generate(log, LINES)
        size = log.stat().st_size
        print(f"generated {LINES} lines ({size / LINES:.0f} bytes each) in {time.monotonic() - started:.0f} s")
        goaccess = timed(["goaccess", str(log), f"--log-format={GOACCESS_FORMAT}", "--date-format=%Y-%m-%d",
                          "--time-format=%H:%M:%S", "--no-progress", "-o", str(Path(tmp) / "report.json")])
        ours = timed([sys.executable, "-c",
                      "import sys; from registry_mirror.analysis.pull_savings import pull_savings; "
                      "s = pull_savings([sys.argv[1]]); print(s.verdict())", str(log)], cwd=ROOT)
    results = {"lines": LINES, "bytes_per_line": round(size / LINES), "goaccess": goaccess, "pull_savings": ours,
               "time_ratio": ours["seconds"] / goaccess["seconds"],
               "memory_ratio": ours["peak_memory_mb"] / goaccess["peak_memory_mb"],
               "anchor": "time_ratio <= 0.25 and memory_ratio < 1", "cpus": os.cpu_count()}
    out = ROOT / "bench" / "results" / "log_analysis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
