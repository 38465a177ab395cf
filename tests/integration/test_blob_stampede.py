"""Clients that ask for a layer while another client's cold fetch of it is in flight (issue 22, item 4),
on both renderings. Docker Hub is slowed to a trickle for blobs, so the first fetch lasts seconds: the
late clients must get their headers and bytes while it runs (not after the whole layer is cached, which
a client with a response-header timeout gives up on), and Docker Hub must see one GET for the layer.
The figures for big layers are bench/stampede.py's; here only the order of events is asserted."""
from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from registry_mirror.access_logs import log_size, read_registry_log
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.fanout import FANOUT
from registry_mirror.platforms.local.hub_stand_in import blobs_at_rate, hub_seeder
from registry_mirror.platforms.local.state import StackState
from registry_mirror.processes import wait_until
from registry_mirror.sample_images import SampleImage, build_image, seed_registry
from tests.integration.cf_mirror_app import CLIENT
from tests.integration.endpoints import Endpoint

pytestmark = pytest.mark.integration

LAYER = 8 * 2**20
LATE_CLIENTS = 4
# 1 MiB/s: the first fill takes about 8 s, long enough that every late client arrives during it.
TRICKLE = 2**20


@dataclass
class Fetch:
    headers_at: float = 0.0
    first_byte_at: float = 0.0
    half_at: float = 0.0  # when half the layer had arrived
    done_at: float = 0.0
    status: int = 0
    digest: str = ""


def test_late_clients_stream_a_cold_layer_while_one_upstream_fetch_fills_it(
        stack: LocalPlatform, endpoint: Endpoint) -> None:
    image = SampleImage(f"library/stampede-{endpoint.rendering}", "latest", layer_sizes=(LAYER,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    layer = build_image(image).platform_manifests[0].layer_digests[0]
    url = f"http://{endpoint.host}:{endpoint.port}/v2/{image.repository}/blobs/{layer}"
    hub_log = stack.paths.logs / "hub.log"

    with _blobs_trickle_from_docker_hub(stack):
        offset = log_size(hub_log)
        first, first_has_bytes = Fetch(), threading.Event()
        leader = threading.Thread(target=_fetch, args=(url, first, first_has_bytes))
        leader.start()
        assert first_has_bytes.wait(timeout=120), "the first client got no bytes"
        late = [Fetch() for _ in range(LATE_CLIENTS)]
        threads = [threading.Thread(target=_fetch, args=(url, fetch, threading.Event())) for fetch in late]
        for thread in threads:
            thread.start()
        for thread in [leader, *threads]:
            thread.join(timeout=300)
            assert not thread.is_alive(), "a client's download did not end"

    assert [(f.status, f.digest) for f in [first, *late]] == [(200, layer)] * (1 + LATE_CLIENTS)
    # Every late client had bytes before the first client had half the layer: they were served from the
    # fill in flight, not made to wait for the whole layer to be cached.
    assert max(f.first_byte_at for f in late) < first.half_at, (first, late)
    path = f"/v2/{image.repository}/blobs/{layer}"

    def upstream_gets() -> int:
        hub = read_registry_log(hub_log, offset=offset)
        return int(((hub["method"] == "GET") & (hub["uri"] == path)).sum())
    # The registry logs a request once its answer is written, which may trail the client's last byte.
    wait_until(upstream_gets, timeout=30, what="Docker Hub's log of the layer's GET")
    assert upstream_gets() == 1


def _fetch(url: str, into: Fetch, has_bytes: threading.Event) -> None:
    session = client_from(CLIENT)
    digest, received = hashlib.sha256(), 0
    with session.get(url, stream=True, timeout=60) as resp:
        into.headers_at, into.status = time.monotonic(), resp.status_code
        for chunk in resp.iter_content(64 * 1024):
            if not into.first_byte_at:
                into.first_byte_at = time.monotonic()
                has_bytes.set()
            digest.update(chunk)
            received += len(chunk)
            if not into.half_at and received >= LAYER // 2:
                into.half_at = time.monotonic()
    into.done_at, into.digest = time.monotonic(), f"sha256:{digest.hexdigest()}"
    has_bytes.set()


@contextmanager
def _blobs_trickle_from_docker_hub(stack: LocalPlatform) -> Iterator[None]:
    assert stack.settings.local is not None
    local = stack.settings.local
    with blobs_at_rate(StackState.load(stack.paths.state_file).processes["hub-front"], config_dir=stack.paths.secrets,
                       logs=stack.paths.logs, address=local.address, port=local.hub_port,
                       token_port=local.hub_token_port, bytes_per_second=TRICKLE):
        yield


def test_blobs_still_come_from_the_mirror_while_blob_fanout_is_down(shared_stack: LocalPlatform) -> None:
    stack = shared_stack
    image = SampleImage("library/fanout-down", "latest", layer_sizes=(300_000,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    layer = build_image(image).platform_manifests[0].layer_digests[0]
    fanout = StackState.load(stack.paths.state_file).processes[FANOUT]
    os.kill(fanout.pid, signal.SIGKILL)
    wait_until(lambda: not fanout.alive(), timeout=10, what="blob-fanout gone")

    fetch = Fetch()
    _fetch(f"http://{stack.endpoint}/v2/{image.repository}/blobs/{layer}", fetch, threading.Event())
    assert (fetch.status, fetch.digest) == (200, layer)
    assert FANOUT in stack.status().condition  # the operator is told, though clients are served

    report = stack.deploy()
    assert report.ok and stack.status().condition.startswith("RUNNING")
