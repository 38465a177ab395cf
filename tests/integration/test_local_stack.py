"""The local stack, deployed by deploy.ipynb, exercised with real clients from several loopback addresses."""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from registry_mirror.access_logs import log_size, read_nginx_log, read_registry_log, upstream_manifest_gets
from registry_mirror.client_pull import pull_with_skopeo
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.processes import session_members, tcp_listeners, wait_until
from registry_mirror.sample_images import SAMPLE_IMAGES, SampleImage, build_image, seed_registry
from registry_mirror.unix_http import unix_request
from registry_mirror.platforms.local.worker_access import WORKER_USER_PREFIX, worker_uids
from tests.support import MANIFEST_TYPES, client, sha256

pytestmark = pytest.mark.integration

ALLOWED = "127.0.0.10"
DENIED = "127.0.0.66"  # explicitly denied
UNLISTED = "127.0.0.77"  # in no range: refused by default


def url(stack: LocalPlatform, path: str) -> str:
    return f"http://{stack.endpoint}{path}"


def hub_log(stack: LocalPlatform) -> str:
    return str(stack.paths.logs / "hub.log")


def test_cold_pull_fetches_upstream_and_warm_pull_makes_no_manifest_get(stack: LocalPlatform) -> None:
    image = "docker.io/library/alpine-sample:3.20"
    before = log_size(hub_log(stack))
    first = pull_with_skopeo(image, registries_conf=stack.client_configs().registries_conf)
    assert first.layers == 1 and first.bytes > 1_000_000
    cold = read_registry_log(hub_log(stack), offset=before)
    assert len(upstream_manifest_gets(cold[cold["uri"].str.contains("alpine-sample")])) >= 1

    middle = log_size(hub_log(stack))
    second = pull_with_skopeo(image, registries_conf=stack.client_configs().registries_conf)
    assert second.digest == first.digest
    warm = read_registry_log(hub_log(stack), offset=middle)
    # Within the tag's window the proxy answers alone: not even a HEAD reaches Docker Hub.
    assert warm.empty, warm.to_string()


def test_pull_went_through_the_proxy_with_the_clients_address(stack: LocalPlatform) -> None:
    before = log_size(stack.paths.logs / "proxy.access.log")
    pull_with_skopeo("docker.io/library/hello:latest", registries_conf=stack.client_configs().registries_conf)

    def manifest_lines() -> list[pd.DataFrame]:
        log = read_nginx_log(stack.paths.logs / "proxy.access.log", offset=before)
        found = log[log["uri"].str.startswith("/v2/library/hello/manifests/")]
        return [found] if not found.empty else []
    # A tag served stale is logged once its background revalidation is done, after the client has it.
    [manifests] = wait_until(manifest_lines, timeout=30, what="the pull's manifest requests in the proxy's log")
    assert set(manifests["client"]) == {"127.0.0.1"}
    assert set(manifests["status"]) == {200}


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2/no-push/blobs/uploads/"),
    ("POST", "/v2/library/hello/blobs/uploads/?mount=sha256:00&from=library/other"),
    ("PUT", "/v2/library/hello/manifests/latest"),
    ("PUT", "/v2/library/hello/blobs/uploads/some-uuid?digest=sha256:00"),
    ("PATCH", "/v2/library/hello/blobs/uploads/some-uuid"),
    ("DELETE", "/v2/library/hello/manifests/sha256:" + "0" * 64),
    ("DELETE", "/v2/library/hello/blobs/sha256:" + "0" * 64),
    ("OPTIONS", "/v2/"),
])
def test_writes_are_refused_by_the_proxy(stack: LocalPlatform, method: str, path: str) -> None:
    resp = client(ALLOWED).request(method, url(stack, path), data=b"x" * 1024, timeout=10)
    assert resp.status_code == 405
    assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_writes_are_refused_by_the_mirror_itself(stack: LocalPlatform) -> None:
    # Defence in depth: even past the proxy, a proxy-mode registry takes no push.
    for sock in stack.mirror_sockets():
        resp = unix_request(str(sock), "POST", "/v2/no-push/blobs/uploads/")
        assert resp.status == 405
        assert b"UNSUPPORTED" in resp.body


@pytest.mark.parametrize("source", [DENIED, UNLISTED])
@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/"), ("GET", "/v2/library/hello/manifests/latest"), ("HEAD", "/v2/library/hello/manifests/latest"),
    ("GET", "/"), ("POST", "/v2/no-push/blobs/uploads/"), ("GET", "/v2/_catalog"),
])
def test_refused_clients_get_403_everywhere(stack: LocalPlatform, source: str, method: str, path: str) -> None:
    resp = client(source).request(method, url(stack, path), timeout=10)
    assert resp.status_code == 403


@pytest.mark.parametrize("forged", [
    ALLOWED,
    f"{ALLOWED}, {ALLOWED}",
    f"{DENIED}, {ALLOWED}",
    "127.0.0.1",
    "::1",
    "not-an-address",
    "unix:",
    ", ".join([ALLOWED] * 300),
])
def test_forged_forwarded_for_does_not_let_a_denied_client_in(stack: LocalPlatform, forged: str) -> None:
    resp = client(DENIED).get(url(stack, "/v2/"), headers={"X-Forwarded-For": forged}, timeout=10)
    assert resp.status_code == 403


def test_allowed_clients_get_the_api(stack: LocalPlatform) -> None:
    for source in (ALLOWED, "127.0.0.1"):
        resp = client(source).get(url(stack, "/v2/"), timeout=10)
        assert resp.status_code == 200
        assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_mirror_is_reachable_only_through_the_proxy(stack: LocalPlatform) -> None:
    running = stack.running_processes()
    mirrors = [r for n, r in running.items() if n.startswith("mirror-")]
    assert len(mirrors) == stack.settings.registry.instances
    for rec in mirrors + [running["proxy"]]:
        assert tcp_listeners(rec.pid) == [], f"{rec.name} listens on TCP"
    assert tcp_listeners(running["router"].pid), "the router stand-in is the public endpoint"


def _connects(path: Path, *, user: str) -> bool:
    """Can `user` open a connection to the unix socket at `path`? Asked by a process running as them."""
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n"
             "except OSError:\n    sys.exit(3)\n")
    # Debian's own python: the venv's interpreter may sit under a folder other users cannot enter.
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", probe, str(path)], user=user,
                            group=pwd.getpwnam(user).pw_gid, extra_groups=[], capture_output=True,
                            timeout=30, check=False)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode == 0


def test_nginx_workers_do_not_run_as_root_and_other_users_cannot_reach_the_sockets(stack: LocalPlatform) -> None:
    running = stack.running_processes()
    sockets = [stack.paths.proxy_socket, *stack.mirror_sockets()]
    for name in ("proxy", "router"):
        workers = session_members(running[name]) - {running[name].pid}
        assert workers, f"{name} has no workers"
        assert 0 not in worker_uids(sorted(workers)).values(), f"{name} runs a worker as root"
    if os.geteuid() != 0:
        # An ordinary user's stack: the workers are that user and the sockets stay in its 0700 folder.
        assert stat.S_IMODE(os.stat(stack.paths.shared).st_mode) == 0o700
        return
    user = stack.paths.access.user
    assert user is not None and user.startswith(WORKER_USER_PREFIX)
    assert all(_connects(path, user=user) for path in sockets)
    # `nobody` stands for every other local account: neither a mirror nor the proxy lets it in.
    assert not any(_connects(path, user="nobody") for path in sockets)
    assert stack.paths.access.problems() == []


def test_cache_hit_is_served_as_bytes_not_a_redirect(stack: LocalPlatform) -> None:
    built = build_image(next(i for i in SAMPLE_IMAGES if i.repository == "library/hello"))
    session = client(ALLOWED)
    session.get(url(stack, "/v2/library/hello/manifests/latest"), headers={"Accept": MANIFEST_TYPES}, timeout=10)
    layer = built.platform_manifests[0].layer_digests[0]
    for _ in range(2):  # the second read is certainly a hit from S3
        resp = session.get(url(stack, f"/v2/library/hello/blobs/{layer}"), allow_redirects=False, timeout=30)
        assert resp.status_code == 200, resp.headers
        assert "Location" not in resp.headers
        assert sha256(resp.content) == layer
    for sock in stack.mirror_sockets():
        direct = unix_request(str(sock), "GET", f"/v2/library/hello/blobs/{layer}")
        assert direct.status == 200 and sha256(direct.body) == layer


def test_redeploy_with_no_change_changes_nothing(stack: LocalPlatform) -> None:
    before = stack.running_processes()
    report = stack.deploy()
    assert report.ok and not report.changed, report
    assert {n: r.pid for n, r in stack.running_processes().items()} == {n: r.pid for n, r in before.items()}


def test_rolling_redeploy_under_load_loses_no_request(stack: LocalPlatform) -> None:
    built = build_image(next(i for i in SAMPLE_IMAGES if i.repository == "library/multiarch"))
    child = built.platform_manifests[0]
    paths = ["/v2/library/multiarch/manifests/latest", f"/v2/library/multiarch/manifests/{child.digest}",
             *(f"/v2/library/multiarch/blobs/{d}" for d in child.layer_digests)]
    ok, failures, stop = [0], [], threading.Event()

    def pull_loop(source: str) -> None:
        session = client(source)
        while not stop.is_set():
            for path in paths:
                try:
                    resp = session.get(url(stack, path), headers={"Accept": MANIFEST_TYPES}, timeout=30)
                    if resp.status_code == 200:
                        ok[0] += 1
                    else:
                        failures.append(f"{path}: {resp.status_code}")
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures.append(f"{path}: {exc}")

    old = {n for n in stack.running_processes() if n.startswith("mirror-")}
    threads = [threading.Thread(target=pull_loop, args=(s,)) for s in (ALLOWED, "127.0.0.11")]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while ok[0] < 50 and time.monotonic() < deadline:  # traffic flows before the redeploy starts
            time.sleep(0.01)
        served_before = ok[0]
        report = stack.deploy(replace_mirrors=True)
        served_during = ok[0] - served_before
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    new = {n for n in stack.running_processes() if n.startswith("mirror-")}
    assert report.ok
    assert not (old & new), "every instance was replaced"
    assert len(new) == stack.settings.registry.instances
    assert failures == [], failures[:5]
    assert served_before >= 50 and served_during > 0


def test_podman_pulls_a_multi_arch_image_by_its_docker_io_name(stack: LocalPlatform, tmp_path, request) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(stack.client_configs().registries_conf)
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path), "CONTAINERS_REGISTRIES_CONF": str(conf)}
    runroot = tempfile.mkdtemp(prefix="pm-")  # podman refuses a runroot path over 50 characters
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    podman = ["podman", "--storage-driver", "vfs", "--root", str(tmp_path / "root"),
              "--runroot", runroot, "--tmpdir", str(tmp_path / "tmp")]
    before = log_size(stack.paths.logs / "proxy.access.log")
    pulled = subprocess.run([*podman, "pull", "--arch", "arm64", "docker.io/library/multiarch:latest"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr[-1000:]
    inspect = subprocess.run([*podman, "image", "inspect", "--format", "{{.Architecture}}",
                              "docker.io/library/multiarch:latest"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert inspect.stdout.strip() == "arm64"
    log = read_nginx_log(stack.paths.logs / "proxy.access.log", offset=before)
    assert (log["uri"].str.startswith("/v2/library/multiarch/") & (log["status"] == 200)).any()


def test_proxy_serves_repeated_blob_reads_from_its_cache_and_still_refuses_strangers(stack: LocalPlatform) -> None:
    built = build_image(next(i for i in SAMPLE_IMAGES if i.repository == "library/alpine-sample"))
    layer = built.platform_manifests[0].layer_digests[0]
    path = f"/v2/library/alpine-sample/blobs/{layer}"
    first = client(ALLOWED).get(url(stack, path), timeout=30)
    second = client(ALLOWED).get(url(stack, path), timeout=30)
    assert first.status_code == second.status_code == 200
    assert sha256(second.content) == layer
    assert second.headers["X-Mirror-Cache"] == "HIT"
    assert second.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    denied = client(DENIED).get(url(stack, path), headers={"X-Forwarded-For": ALLOWED}, timeout=30)
    assert denied.status_code == 403 and layer.encode() not in denied.content


def test_concurrent_cold_reads_of_one_blob_make_one_upstream_fetch(stack: LocalPlatform) -> None:
    image = SampleImage("library/stampede", "latest", layer_sizes=(8 * 1024 * 1024,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    layer = build_image(image).platform_manifests[0].layer_digests[0]
    path = f"/v2/library/stampede/blobs/{layer}"
    before = log_size(hub_log(stack))
    barrier = threading.Barrier(8)
    results: list[tuple[int, str]] = []

    def fetch(i: int) -> None:
        session = client(ALLOWED if i % 2 else "127.0.0.11")
        barrier.wait(timeout=30)
        resp = session.get(url(stack, path), timeout=120)
        results.append((resp.status_code, sha256(resp.content)))

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert results == [(200, layer)] * 8
    upstream = read_registry_log(hub_log(stack), offset=before)
    gets = upstream[(upstream["method"] == "GET") & (upstream["uri"] == path)]
    # One miss reaches the registry; 2.8 then fetches the blob twice (for the client and the store).
    # Without the proxy's cache lock, eight cold clients cost nine upstream fetches.
    assert 1 <= len(gets) <= 2, gets.to_string()


def test_a_killed_instance_costs_no_request_and_the_next_deploy_replaces_it(stack: LocalPlatform) -> None:
    paths = ["/v2/library/hello/manifests/latest", "/v2/", "/v2/library/multiarch/manifests/latest"]
    ok, failures, stop = [0], [], threading.Event()

    def pull_loop() -> None:
        session = client(ALLOWED)
        while not stop.is_set():
            for path in paths:
                try:
                    resp = session.get(url(stack, path), headers={"Accept": MANIFEST_TYPES}, timeout=30)
                    ok[0] += resp.status_code == 200
                    if resp.status_code != 200:
                        failures.append(f"{path}: {resp.status_code}")
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures.append(f"{path}: {exc}")

    victim = next(r for n, r in stack.running_processes().items() if n.startswith("mirror-"))
    worker = threading.Thread(target=pull_loop)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while ok[0] < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim.pid, 9)  # no drain, no goodbye: a crash
        served = ok[0]
        while ok[0] < served + 60 and time.monotonic() < deadline + 30:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert failures == [], failures[:5]
    assert ok[0] >= served + 60
    report = stack.deploy()
    assert any(s.action == "drop dead instance" for s in report.steps), report
    alive = [n for n in stack.running_processes() if n.startswith("mirror-")]
    assert len(alive) == stack.settings.registry.instances and victim.name not in alive
    assert stack.deploy().changed is False


def test_the_catalog_is_refused_and_a_forged_host_is_never_reflected(stack: LocalPlatform) -> None:
    catalog = client(ALLOWED).get(url(stack, "/v2/_catalog"), timeout=10)
    assert catalog.status_code == 404 and catalog.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert client(DENIED).get(url(stack, "/v2/_catalog"), timeout=10).status_code == 403
    evil = "attacker.example"
    for method, path in [("GET", "/v2/"), ("GET", "/v2/library/hello/manifests/latest"),
                         ("HEAD", "/v2/library/hello/manifests/latest"), ("GET", "/v2/library/nothing/manifests/x"),
                         ("GET", "/v2/library/hello/blobs/uploads/"), ("GET", "/v2"), ("GET", "/")]:
        resp = client(ALLOWED).request(method, url(stack, path), headers={"Host": evil, "Accept": MANIFEST_TYPES},
                                       allow_redirects=False, timeout=10)
        assert not any(evil in v for v in resp.headers.values()), (path, dict(resp.headers))
        assert evil.encode() not in resp.content, path


def test_the_mirror_account_upstream_may_only_pull(stack: LocalPlatform) -> None:
    from registry_mirror.checks.upstream import upstream_scope_check

    assert upstream_scope_check(stack.settings).status == "pass"
    # Control: the stand-in's seeding account can push, and the check says so.
    name, password = hub_seeder(stack.paths.secrets)
    seeder = stack.settings.model_copy(update={"upstream": stack.settings.upstream.model_copy(
        update={"username": name, "password": password})})
    check = upstream_scope_check(seeder)
    assert check.status == "warn" and "push" in check.observed and password not in repr(check)
