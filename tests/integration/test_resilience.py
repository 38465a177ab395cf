"""The bad days: Docker Hub hung, S3 down, a herd of cold clients. Through the public endpoint with real
clients, every digest verified.

They need a short tag window and manifest timeout, which only the proxy's config holds: so they run on
the shared stack with those two settings deployed (the proxy reloads, nothing else restarts), and the
shared settings are deployed back after them.
"""
from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from registry_mirror.access_logs import log_size, read_registry_log, upstream_manifest_gets
from registry_mirror.checks.client import MANIFEST_ACCEPT, PullFailed, pull_over_api
from registry_mirror.client_pull import pull_with_skopeo
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.state import HUB_PARTS, StackState
from registry_mirror.platforms import verify_pull
from registry_mirror.processes import ProcessRecord, stop_process, wait_until
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.support import client

pytestmark = pytest.mark.integration

ALLOWED = "127.0.0.10"
TAG_SECONDS = 3  # short, so a test sees a tag expire; production keeps the default (60)
TIMEOUT_SECONDS = 4


@pytest.fixture(scope="module")
def tough(stack: LocalPlatform) -> Iterator[LocalPlatform]:
    proxy = stack.settings.proxy.model_copy(update={"tag_cache_seconds": TAG_SECONDS,
                                                    "manifest_timeout_seconds": TIMEOUT_SECONDS})
    variant = LocalPlatform(stack.settings.model_copy(update={"proxy": proxy}), stack.rules)
    report = variant.deploy()
    assert report.ok and {s.component for s in report.steps if s.status == "done"} == {"proxy"}, report
    yield variant
    back = stack.deploy()
    assert back.ok and stack.status().condition.startswith("RUNNING"), back


@pytest.fixture(autouse=True)
def left_running(tough: LocalPlatform) -> Iterator[None]:
    """Each test leaves the stack running with these settings; one that did not fails, and the stack is
    deployed again for the next."""
    yield
    condition = tough.status().condition
    if not condition.startswith("RUNNING"):
        for record in processes(tough).values():
            if record.alive():
                os.kill(record.pid, signal.SIGCONT)
        tough.deploy()
        pytest.fail(f"the test left the stack {condition}; deployed it again")


def fresh_image(stack: LocalPlatform, layers: tuple[int, ...] = (65536, 4096)) -> str:
    """A tag nobody pulled yet: pushed to the Docker Hub stand-in now."""
    image = SampleImage(f"library/fresh-{secrets.token_hex(4)}", "1", layer_sizes=layers)
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    return f"docker.io/{image.repository}:{image.tag}"


def hub_requests(stack: LocalPlatform, offset: int):  # type: ignore[no-untyped-def]
    return read_registry_log(stack.paths.logs / "hub.log", offset=offset)


def pull(stack: LocalPlatform, image: str, *, source: str = ALLOWED):  # type: ignore[no-untyped-def]
    repository, tag = image.removeprefix("docker.io/").rsplit(":", 1)
    return pull_over_api(f"http://{stack.endpoint}", client(source), repository, tag)


def tag_state(stack: LocalPlatform, image: str) -> str:
    repository, tag = image.removeprefix("docker.io/").rsplit(":", 1)
    # GET with the Accept the pulls send: the same cache entry they use (HEAD is cached apart).
    resp = client(ALLOWED).get(f"http://{stack.endpoint}/v2/{repository}/manifests/{tag}",
                                headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
    return resp.headers.get("X-Mirror-Cache", "")


def frozen(records: list[ProcessRecord]):  # type: ignore[no-untyped-def]
    """SIGSTOP: the process keeps its sockets, the kernel accepts connections, nothing answers."""
    class Frozen:
        def __enter__(self) -> None:
            for r in records:
                os.kill(r.pid, signal.SIGSTOP)

        def __exit__(self, *exc: object) -> None:
            for r in records:
                os.kill(r.pid, signal.SIGCONT)
    return Frozen()


def processes(stack: LocalPlatform) -> dict[str, ProcessRecord]:
    return StackState.load(stack.paths.state_file).processes


# ------------------------------------------------------------------------------ the herd

def test_sixteen_cold_clients_of_one_tag_make_one_upstream_manifest_get(tough: LocalPlatform) -> None:
    image = fresh_image(tough)
    before = log_size(tough.paths.logs / "hub.log")
    start, results, errors = threading.Barrier(16), [], []

    def one() -> None:
        start.wait()
        try:
            results.append(pull(tough, image))
        except (PullFailed, requests.RequestException) as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(results) == 16
    assert len({r.digest for r in results}) == 1
    hub = hub_requests(tough, before)
    name = image.removeprefix("docker.io/").split(":")[0]
    mine = hub[hub["uri"].str.contains(name, regex=False)]
    assert len(upstream_manifest_gets(mine)) == 1, mine.to_string()
    blob_gets = mine[(mine["method"] == "GET") & mine["uri"].str.contains("/blobs/")]
    assert blob_gets.groupby("uri").size().max() <= 2, blob_gets.to_string()


def test_a_warm_tag_within_its_window_costs_no_upstream_request(tough: LocalPlatform) -> None:
    image = fresh_image(tough)
    first = pull(tough, image)
    before = log_size(tough.paths.logs / "hub.log")
    token_before = log_size(tough.paths.logs / "hub-token.log")
    again = pull(tough, image)
    assert again.digest == first.digest
    assert hub_requests(tough, before).empty
    assert log_size(tough.paths.logs / "hub-token.log") == token_before


# ------------------------------------------------------------------------------ Docker Hub hung

def test_cached_images_pull_by_tag_and_digest_while_docker_hub_hangs(tough: LocalPlatform) -> None:
    image = fresh_image(tough)
    warm = pull(tough, image)
    conf = tough.client_configs().registries_conf
    by_digest = f"docker.io/{warm.repository}@{warm.digest}"
    pull_with_skopeo(image, registries_conf=conf)  # each kind of client caches its own answer to a tag
    pull_with_skopeo(by_digest, registries_conf=conf)
    uncached = fresh_image(tough)
    hub = [processes(tough)[n] for n in HUB_PARTS]
    with frozen(hub):
        # Past its window the tag is revalidated in the background; the cached copy keeps serving.
        wait_until(lambda: tag_state(tough, image) in ("STALE", "UPDATING"), timeout=TAG_SECONDS + 30,
                   what="the tag to expire", interval=0.5)
        started = time.monotonic()
        assert pull(tough, image).digest == warm.digest
        assert pull_with_skopeo(image, registries_conf=conf, timeout=60).layers == 2
        assert pull_with_skopeo(by_digest, registries_conf=conf, timeout=60).layers == 2
        cached_seconds = time.monotonic() - started
        # Nothing cached: a clear registry error within the bound, not a hang.
        repository, tag = uncached.removeprefix("docker.io/").rsplit(":", 1)
        started = time.monotonic()
        resp = client(ALLOWED).get(f"http://{tough.endpoint}/v2/{repository}/manifests/{tag}",
                                   headers={"Accept": MANIFEST_ACCEPT}, timeout=60)
        uncached_seconds = time.monotonic() - started
        # That timeout says nothing about the mirror instances: a blob they hold in S3 (a HEAD is not
        # in the proxy's cache yet) is still served, not refused as "no live upstreams".
        blob = client(ALLOWED).head(f"http://{tough.endpoint}/v2/{warm.repository}/blobs/{warm.first_layer}",
                                    timeout=30)
    assert blob.status_code == 200, blob.status_code
    assert cached_seconds < 10, f"cached pulls took {cached_seconds:.1f} s with Docker Hub hung"
    assert resp.status_code == 504 and resp.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert uncached_seconds < TIMEOUT_SECONDS + 3
    # Once Docker Hub answers again the tag is revalidated, not stuck stale.
    wait_until(lambda: tag_state(tough, image) == "HIT", timeout=60, what="the tag to revalidate", interval=0.5)


# ------------------------------------------------------------------------------ S3 down

def test_cached_images_keep_pulling_while_s3_is_down_and_nothing_wrong_is_served(tough: LocalPlatform) -> None:
    image = fresh_image(tough)
    warm = pull(tough, image)
    pull_with_skopeo(image, registries_conf=tough.client_configs().registries_conf)  # skopeo's own entry
    gateway = processes(tough)["s3-gateway"]
    stop_process(gateway)
    try:
        wait_until(lambda: tag_state(tough, image) in ("STALE", "UPDATING"), timeout=TAG_SECONDS + 30,
                   what="the tag to expire", interval=0.5)
        for _ in range(5):
            assert pull(tough, image).digest == warm.digest  # every blob's digest verified by the pull
        # The deploy runbook's verification says the cache served it, not that all is well.
        verified = verify_pull(tough, image=image)
        assert verified is not None and "S3 DOWN" in verified.verdict()
        # An image never pulled cannot be served: an error, never something else.
        other = fresh_image(tough)
        with pytest.raises(PullFailed):
            pull(tough, other)
    finally:
        report = tough.deploy()  # restarts the gateway
    assert report.ok and pull(tough, image).digest == warm.digest
