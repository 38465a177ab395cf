"""Big cold layers under a stampede (issue 22, item 4), on a private stack, against a same-run baseline.

The proxy is pointed at one extra mirror instance whose upstream is the Docker Hub stand-in behind a
relay throttled to RATE bytes/s (as Docker Hub is slower than a local disk). Then:
  baseline  one client pulls a cold layer through the public endpoint;
  herd      CLIENTS clients pull another cold layer of the same size at once;
  herd, long lock    the same with the blob cache lock timeout at 15 minutes (as it was) instead of the
            rendered 20 s (after which a waiting client goes upstream itself, uncached).
For each: time to the response headers and to the last byte per client, and the upstream blob GETs.
A containerd 2.3 client gives up when headers take longer than 30 s: the count of clients past that
is printed too.

    .venv/bin/python bench/stampede.py [size MiB, default 400] [rate MiB/s, default 8] [clients, default 8]

Results go to bench/results/stampede.json with the machine description.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, local_test_settings, machine  # noqa: F401 - also puts the project on sys.path

import yaml

from registry_mirror.access_logs import log_size, read_registry_log
from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local.mirrors import mirror_registry_binary, start_mirror_instance
from registry_mirror.platforms.local.nginx import reload_nginx
from registry_mirror.platforms.local.rollout import set_service
from registry_mirror.platforms.local.state import StackState
from registry_mirror.processes import free_port, stop_process
from registry_mirror.sample_images import SampleImage, build_image, seed_registry

ALLOWED = "127.0.0.10"
HEADER_TIMEOUT = 30.0  # containerd 2.3's fixed response-header timeout


def main() -> int:
    size = int(float(sys.argv[1]) * 2**20) if len(sys.argv) > 1 else 400 * 2**20
    rate = float(sys.argv[2]) * 2**20 if len(sys.argv) > 2 else 8 * 2**20
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    with tempfile.TemporaryDirectory(prefix="bench-stampede-") as tmp:
        settings = local_test_settings(str(Path(tmp) / "state"))
        stack = LocalPlatform(settings, settings.load_security_rules())
        relay_port = free_port()
        relay = ThrottledRelay(("127.0.0.1", relay_port), ("127.0.0.1", settings.local.hub_port), rate)
        record = None
        try:
            stack.deploy()
            relay.start()
            record = _throttled_mirror(stack, f"http://127.0.0.1:{relay_port}")
            results = {"machine": machine(), "layer_bytes": size, "upstream_bytes_per_s": rate,
                       "baseline_one_client": _pull(stack, size, 1), "herd": _pull(stack, size, clients)}
            _blob_lock_timeout(stack, "15m")
            results["herd_lock_15m"] = _pull(stack, size, clients)
        finally:
            if record is not None:
                stop_process(record)
            relay.stop()
            stack.down()
    out = ROOT / "bench" / "results" / "stampede.json"
    out.write_text(json.dumps(results, indent=2))
    one = results["baseline_one_client"]
    print(json.dumps(results, indent=2))
    for name in ("herd", "herd_lock_15m"):
        herd = results[name]
        print(f"{name}: headers median {herd['headers_s']['median']:.1f} s, max {herd['headers_s']['max']:.1f} s "
              f"against one client's {one['headers_s']['max']:.1f} s; past {HEADER_TIMEOUT:.0f} s: "
              f"{herd['clients_past_header_timeout']} of {clients}; last byte {herd['last_byte_s']['max']:.1f} s "
              f"(one client {one['last_byte_s']['max']:.1f} s); upstream blob GETs {herd['upstream_blob_gets']}")
    print(f"written to {out}")
    return 0


def _throttled_mirror(stack: LocalPlatform, upstream: str):  # type: ignore[no-untyped-def]
    """One more mirror instance, configured as the stack's but fetching through the relay; the proxy then
    sends to it alone."""
    name = "mirror-throttled"
    config = stack.configs.mirror_config(name)
    config["proxy"]["remoteurl"] = upstream
    path = stack.paths.config / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    secrets_env = stack.mirror_secret_env(LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False))
    started = start_mirror_instance(name, executable=mirror_registry_binary(stack.settings.registry.version),
                                    config_file=path, socket_path=stack.paths.mirror_socket(name),
                                    log=stack.paths.logs / f"{name}.log", secrets=secrets_env)
    set_service(stack.configs, StackState.load(stack.paths.state_file), [name])
    return started.record


def _blob_lock_timeout(stack: LocalPlatform, value: str) -> None:
    """The proxy's config as deployed, but for the blob cache lock's timeout (its age stays 15 minutes:
    no second fill starts while the first one runs)."""
    state = StackState.load(stack.paths.state_file)
    conf = stack.paths.config / "proxy.conf"
    text = stack.configs.nginx_conf("proxy", state.mirrors)
    assert text.count("proxy_cache_lock_timeout 20s;") == 1
    conf.write_text(text.replace("proxy_cache_lock_timeout 20s;", f"proxy_cache_lock_timeout {value};"))
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


class ThrottledRelay:
    """A TCP relay whose answers (upstream to client) flow at `rate` bytes/s per connection."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], rate: float) -> None:
        self.listen, self.target, self.rate = listen, target, rate
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self) -> None:
        sock = socket.create_server(self.listen)
        await asyncio.start_server(self._relay, sock=sock)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, None), self._pipe(up_reader, writer, self.rate))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


if __name__ == "__main__":
    raise SystemExit(main())
