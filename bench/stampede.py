"""Big cold layers under a stampede (issue 22, item 4), on a private stack, against same-run baselines.

The Docker Hub stand-in sends blobs at RATE bytes/s per connection (as Docker Hub is slower than a
local disk; its front rate-limits them, so tokens and manifests are not slowed). Then, each on a layer
of its own:
  baseline        one client pulls a cold layer through the public endpoint;
  herd            CLIENTS clients pull a cold layer at once, as rendered: the blob cache lock holds a
                  late client 1 s, then blob-fanout joins it to the fill in flight;
  herd_no_fanout  the same lock, but a late client goes on to the mirror itself (no blob-fanout);
  herd_lock_15m   no blob-fanout and the lock held for the whole fill (15 minutes, as it once was).
For each: time to the response headers and to the last byte per client, and the upstream blob GETs.
A containerd 2.3 client gives up when headers take longer than 30 s: the count of clients past that
is printed too.

    .venv/bin/python bench/stampede.py [size MiB, default 400] [rate MiB/s, default 8] [clients, default 8]

Results go to bench/results/stampede.json with the machine description.
"""
from __future__ import annotations

import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, local_test_settings, machine  # noqa: F401 - also puts the project on sys.path

from registry_mirror.access_logs import log_size, read_registry_log
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import blobs_at_rate, hub_seeder
from registry_mirror.platforms.local.nginx import reload_nginx
from registry_mirror.platforms.local.state import StackState
from registry_mirror.sample_images import SampleImage, build_image, seed_registry

ALLOWED = "127.0.0.10"
HEADER_TIMEOUT = 30.0  # containerd 2.3's fixed response-header timeout


def main() -> int:
    size = int(float(sys.argv[1]) * 2**20) if len(sys.argv) > 1 else 400 * 2**20
    rate = int(float(sys.argv[2]) * 2**20) if len(sys.argv) > 2 else 8 * 2**20
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    with tempfile.TemporaryDirectory(prefix="bench-stampede-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        local = settings.local
        try:
            stack.deploy()
            front = StackState.load(stack.paths.state_file).processes["hub-front"]
            with blobs_at_rate(front, config_dir=stack.paths.secrets, logs=stack.paths.logs, address=local.address,
                               port=local.hub_port, token_port=local.hub_token_port, bytes_per_second=rate):
                results = {"machine": machine(), "layer_bytes": size, "upstream_bytes_per_s": rate,
                           "baseline_one_client": _pull(stack, size, 1), "herd": _pull(stack, size, clients)}
                _proxy_variant(stack, fanout=False, lock_timeout="1s")
                results["herd_no_fanout"] = _pull(stack, size, clients)
                _proxy_variant(stack, fanout=False, lock_timeout="15m")
                results["herd_lock_15m"] = _pull(stack, size, clients)
        finally:
            stack.down()
    out = ROOT / "bench" / "results" / "stampede.json"
    out.write_text(json.dumps(results, indent=2))
    one = results["baseline_one_client"]
    print(json.dumps(results, indent=2))
    for name in ("herd", "herd_no_fanout", "herd_lock_15m"):
        herd = results[name]
        print(f"{name}: headers median {herd['headers_s']['median']:.1f} s, max {herd['headers_s']['max']:.1f} s "
              f"against one client's {one['headers_s']['max']:.1f} s; past {HEADER_TIMEOUT:.0f} s: "
              f"{herd['clients_past_header_timeout']} of {clients}; last byte {herd['last_byte_s']['max']:.1f} s "
              f"(one client {one['last_byte_s']['max']:.1f} s); upstream blob GETs {herd['upstream_blob_gets']}")
    print(f"written to {out}")
    return 0


def _proxy_variant(stack: LocalPlatform, *, fanout: bool, lock_timeout: str) -> None:
    """The proxy's config as deployed, but for the blob cache lock's timeout and whether a blob the
    cache does not hold goes to blob-fanout (its age stays 15 minutes: no second fill starts while the
    first one runs)."""
    state = StackState.load(stack.paths.state_file)
    conf = stack.paths.config / "proxy.conf"
    text = stack.configs.nginx_conf("proxy", state.mirrors)
    assert text.count("proxy_cache_lock_timeout 1s;") == 1
    text = text.replace("proxy_cache_lock_timeout 1s;", f"proxy_cache_lock_timeout {lock_timeout};")
    if not fanout:
        primary = f"server unix:{stack.paths.fanout_socket} max_fails=1 fail_timeout=5s;"
        backup = f"server unix:{stack.paths.mirror_pass_socket} backup;"
        assert text.count(primary) == 1 and text.count(backup) == 1
        text = text.replace(primary, "").replace(backup, f"server unix:{stack.paths.mirror_pass_socket};")
    conf.write_text(text)
    reload_nginx(state.processes["proxy"], conf=conf, prefix=stack.paths.nginx_prefix("proxy"))


def _pull(stack: LocalPlatform, size: int, clients: int) -> dict[str, object]:
    image = SampleImage(f"library/stampede-{secrets.token_hex(4)}", "latest", layer_sizes=(size,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image], timeout=600)
    layer = build_image(image).platform_manifests[0].layer_digests[0]
    path = f"/v2/{image.repository}/blobs/{layer}"
    hub_log = stack.paths.logs / "hub.log"
    offset = log_size(hub_log)
    barrier = threading.Barrier(clients)
    timings: list[tuple[float, float, int]] = []

    def one() -> None:
        session = client_from(ALLOWED)
        barrier.wait()
        start = time.monotonic()
        with session.get(f"http://{stack.endpoint}{path}", stream=True, timeout=1800) as resp:
            headers = time.monotonic() - start
            received = sum(len(chunk) for chunk in resp.iter_content(2**20))
        timings.append((headers, time.monotonic() - start, resp.status_code if received else 0))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hub = read_registry_log(hub_log, offset=offset)
    gets = int(((hub["method"] == "GET") & (hub["uri"] == path)).sum())
    headers = sorted(t[0] for t in timings)
    return {"clients": clients, "statuses": sorted(t[2] for t in timings),
            "headers_s": {"median": headers[len(headers) // 2], "max": headers[-1], "all": headers},
            "last_byte_s": {"max": max(t[1] for t in timings)},
            "clients_past_header_timeout": sum(h > HEADER_TIMEOUT for h in headers),
            "upstream_blob_gets": gets}


if __name__ == "__main__":
    raise SystemExit(main())
