"""Retention on the session's stack: eviction to a budget while clients pull, and what pulls cost after.

The test evicts only its own images: every other repository in the bucket is pinned (other tests'
images stay cached, so the shared stack needs nothing put back). Pulls go straight to the mirror
instances' sockets, not through the security proxy: the proxy's own disk caches would answer them
and hide both the race under test and what the mirror fetches again. The Docker Hub stand-in's log
is the ground truth for upstream fetches.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from registry_mirror.access_logs import log_size, read_registry_log
from registry_mirror.analysis.cache_inventory import open_cache, take_inventory
from registry_mirror.checks.client import MANIFEST_ACCEPT
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.processes import wait_until
from registry_mirror.retention.apply import GateClosed, apply_retention
from registry_mirror.retention.ledger import read_ledger, update_ledger
from registry_mirror.retention.policy import RetentionPolicy
from registry_mirror.retention.runbook import plan_from_bucket
from registry_mirror.sample_images import SampleImage, seed_registry

pytestmark = pytest.mark.integration
LAYER = 50_000  # each image's own layer; its first, empty layer is the same blob in every image


def test_eviction_to_a_budget_under_load(stack: LocalPlatform, tmp_path: Path) -> None:
    run = secrets.token_hex(3)
    # Every image has an empty first layer: the same blob in every repository (shared, must stay).
    evicted = [SampleImage(f"retention-{run}/a{i}", "1", layer_sizes=(0, LAYER)) for i in range(2)]
    evicted.append(SampleImage(f"retention-{run}/a2", "1", platforms=("linux/amd64", "linux/arm64"),
                               layer_sizes=(0, LAYER)))
    kept = [SampleImage(f"retention-{run}/k{i}", "1", layer_sizes=(0, LAYER)) for i in range(2)]
    seeded = {s.repository: s for s in seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets),
                                                     [*evicted, *kept])}
    sockets = [str(s) for s in stack.mirror_sockets()]
    for image in evicted:
        _pull(sockets[0], image.repository, image.tag)
    # The kept ones are pulled last: the least recently pulled go first.
    _wait_for_next_second()
    for image in kept:
        _pull(sockets[0], image.repository, image.tag)

    cache = open_cache(stack.settings)
    logs = stack.paths.logs
    # A mirror stores a blob after its client has the last byte: wait until no upload is in flight.
    mine = f"docker/registry/v2/repositories/retention-{run}/"
    wait_until(lambda: not any("/_uploads/" in o["Key"] for o in cache.listing(mine)), timeout=15,
               what="the mirror to store the blobs it fetched")
    update_ledger(cache, f"retention-test-{run}/", [], sorted(logs.glob("mirror-*.log")))
    ledger = read_ledger(cache, f"retention-test-{run}/")
    assert {f"retention-{run}/k0", f"retention-{run}/a0"} <= set(ledger["repository"])

    policy = RetentionPolicy(protect_days=0.0, grace_seconds=2.0, ledger_prefix=f"retention-test-{run}/", budget="1G")
    planned = plan_from_bucket(cache, policy)
    others = sorted({r for r in planned.inventory.objects["repository"].dropna() if not r.startswith(f"retention-{run}/")})
    policy = policy.model_copy(update={"pinned": others})
    planned = plan_from_bucket(cache, policy)
    # A budget that takes the evicted images (and the rest of what nothing references) but no more.
    evictable = sum(e.bytes_freed for e in planned.plan.evictions)  # with 1G nothing is over budget yet
    total = planned.plan.total_bytes
    budget = total - evictable - len(evicted) * LAYER
    policy = policy.model_copy(update={"budget": f"{budget / 1e3:.3f}K"})
    planned = plan_from_bucket(cache, policy)
    plan = planned.plan
    chosen = {e.image for e in plan.evictions if e.image != "(unreferenced)"}
    assert chosen == {i.repository for i in evicted}, plan.table()
    assert plan.after_bytes <= policy.budget_bytes
    shared = seeded[kept[0].repository]  # the empty layer's digest, from any image's manifest
    empty_layer = _layers(sockets[0], kept[0].repository, shared.digest)[0]
    assert all(not k.endswith(f"{empty_layer[7:]}/data") for k in plan.blob_keys())

    # The gate: a dry run changes nothing; without confirmation, nothing happens either.
    before = sorted(o["Key"] for o in cache.listing(""))
    assert "nothing was changed" in apply_retention(plan, cache).summary()
    with pytest.raises(GateClosed, match="confirm_eviction=True"):
        apply_retention(plan, cache, dry_run=False)
    assert sorted(o["Key"] for o in cache.listing("")) == before

    # Eviction while clients pull the kept images and one being evicted, from both instances, in a loop.
    hub_log = logs / "hub.log"
    hub_at = log_size(hub_log)
    done = threading.Event()
    pulls: dict[str, int] = {}
    failures: list[str] = []

    def load(socket: str, images: list[SampleImage]) -> None:
        while not done.is_set():
            for image in images:
                try:
                    if image in kept:  # by digest: no upstream request at all, so many more of them
                        _pull_digest(socket, image.repository, seeded[image.repository].digest)
                    else:
                        _pull(socket, image.repository, image.tag)
                    pulls[image.repository] = pulls.get(image.repository, 0) + 1
                except AssertionError as failed:
                    failures.append(str(failed))
    loaders = [threading.Thread(target=load, args=(sockets[i % len(sockets)], [*kept, evicted[0]]))
               for i in range(4)]
    for thread in loaders:
        thread.start()
    try:
        result = apply_retention(plan, cache, dry_run=False, confirm=True)
    finally:
        done.set()
        for thread in loaders:
            thread.join(timeout=60)
    assert not failures, failures[:3]
    assert pulls[evicted[0].repository] >= 4 and result.blobs_deleted > 0, pulls
    # The loaders pulled evicted[0] across its eviction: after it they fetched it from upstream again.
    during = read_registry_log(hub_log, offset=hub_at)
    assert during["uri"].str.startswith(f"/v2/{evicted[0].repository}/blobs/").any()

    after = take_inventory(cache, progress=False)
    # Loaded images may be fetched again meanwhile (evicted[0] is); everything else ends under budget.
    objects = after.objects
    reloaded = objects[objects["repository"] == evicted[0].repository]
    again = set(reloaded["digest"].dropna()) - {empty_layer}
    reloaded_bytes = int(reloaded["size"].sum()) + int(after.blobs[after.blobs["digest"].isin(again)]["size"].sum())
    assert int(objects["size"].sum()) - reloaded_bytes <= policy.budget_bytes
    assert empty_layer in set(after.blobs["digest"])

    # Kept images, by digest: served from the bucket, nothing asked upstream.
    hub_at = log_size(hub_log)
    for image in kept:
        _pull_digest(sockets[1], image.repository, seeded[image.repository].digest)
    upstream = read_registry_log(hub_log, offset=hub_at)
    assert not upstream["uri"].str.contains(f"retention-{run}/k", regex=False).any()
    # Evicted images, by tag: one manifest fetched from upstream each, and they pull whole again.
    for image in evicted[1:]:
        _pull(sockets[1], image.repository, image.tag)
    upstream = read_registry_log(hub_log, offset=hub_at)
    for image in evicted[1:]:
        mine = upstream[upstream["uri"].str.startswith(f"/v2/{image.repository}/manifests/")]
        children = 1 if len(image.platforms) > 1 else 0  # an index and the one child pulled
        assert len(mine[(mine["method"] == "GET") & (mine["status"] == 200)]) == 1 + children, mine


def _pull(socket: str, repository: str, tag: str) -> None:
    """A client's pull straight from one mirror instance: tag, the amd64 manifest, every blob, verified."""
    answer = _get(socket, f"/v2/{repository}/manifests/{tag}", MANIFEST_ACCEPT)
    document = json.loads(answer)
    if "manifests" in document:
        digest = next(m["digest"] for m in document["manifests"] if m["platform"]["architecture"] == "amd64")
        _pull_digest(socket, repository, digest)
    else:
        _blobs(socket, repository, document)


def _pull_digest(socket: str, repository: str, digest: str) -> None:
    _blobs(socket, repository, json.loads(_get(socket, f"/v2/{repository}/manifests/{digest}", MANIFEST_ACCEPT)))


def _layers(socket: str, repository: str, digest: str) -> list[str]:
    document = json.loads(_get(socket, f"/v2/{repository}/manifests/{digest}", MANIFEST_ACCEPT))
    return [layer["digest"] for layer in document["layers"]]


def _blobs(socket: str, repository: str, manifest: dict) -> None:
    for digest in [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]:
        body = _get(socket, f"/v2/{repository}/blobs/{digest}", "*/*")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest, f"{repository} blob {digest[:19]} corrupt"


def _get(socket: str, path: str, accept: str) -> bytes:
    """One GET on this thread's kept-alive connection to the instance. Kept alive as the proxy keeps
    its upstream connections: a client that hangs up the moment it has the bytes cancels the
    registry's request, and with it the storing of a blob it was fetching from upstream."""
    connections = _CONNECTIONS.__dict__.setdefault("by_socket", {})
    connection = connections.get(socket) or connections.setdefault(socket, _KeptAlive(socket))
    try:
        connection.request("GET", path, headers={"Accept": accept})
        answer = connection.getresponse()
        body = answer.read()
    except Exception as error:  # noqa: BLE001 - a cut connection is a failed pull, counted as such
        connection.close()
        connections.pop(socket, None)
        raise AssertionError(f"GET {path}: {error}") from None
    assert answer.status == 200, f"GET {path}: {answer.status} {body[:200]!r}"
    return body


_CONNECTIONS = threading.local()


class _KeptAlive(http.client.HTTPConnection):
    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def _wait_for_next_second() -> None:
    """Log times have one-second resolution: start the next pulls in a later second."""
    start = int(time.time())
    deadline = time.monotonic() + 2
    while int(time.time()) == start and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.notebooks
def test_the_notebooks_dry_run_changes_nothing(stack: LocalPlatform, tmp_path: Path) -> None:
    """retention.ipynb under papermill with the stack's settings (its one papermill run; the gate is
    proven above through the same call): a dry run prints the plan and leaves every object as it was."""
    import papermill as pm

    from tests.support import settings_as_parameters

    root = Path(__file__).resolve().parents[2]
    cache = open_cache(stack.settings)
    before = _listing(cache)
    parameters = {**settings_as_parameters(stack.settings), "budget": "1K", "update_ledger": False,
                  "output_dir": str(tmp_path / "out")}
    out = tmp_path / "retention.ipynb"
    pm.execute_notebook(str(root / "notebooks/retention.ipynb"), str(out), cwd=str(root / "notebooks"),
                        parameters=parameters, progress_bar=False, kernel_name="python3")
    text = out.read_text()
    assert "Dry run: would delete" in text and "the 1.0 kB budget" in text
    assert (tmp_path / "out" / "retention_plan.csv").exists()
    assert _listing(cache) == before
    from tests.support import first_screen

    assert "Plan: evicting" in first_screen(out, tmp_path / "screen")  # the plan, seen first


def _listing(cache) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Every object and its size, but the proxy scheduler's state, which the registry rewrites on its own."""
    return sorted((o["Key"], o["Size"]) for o in cache.listing("") if o["Key"] != "scheduler-state.json")
