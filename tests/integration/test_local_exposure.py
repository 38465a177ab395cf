"""Another local user against the shared local stack: every way in a hostile account tries, made as
`nobody` (and as another stack's workers), fails; the same attempt made by the stack succeeds."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from registry_mirror.client_pull import pull_with_skopeo
from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.exposure import STRANGER, cache_not_exposed, stranger_attempts
from registry_mirror.platforms.local.private_network import run_inside
from registry_mirror.platforms.local.seaweedfs import cached_blob_readable, internal_ports, s3_round_trip
from registry_mirror.platforms.local.stranger import SYSTEM_PYTHON, Attempt, Outcome, run_as
from registry_mirror.platforms.local.worker_access import worker_access
from registry_mirror.s3_clients import s3_client

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="acting as another local user needs root")]


def _as_stranger(stack: LocalPlatform, kind: str) -> dict[str, tuple[Attempt, str, Outcome]]:
    """Each attempt of these kinds as `nobody`: label -> (attempt, what must happen, what did)."""
    attempts = [(a, want) for a, want in stranger_attempts(stack) if a.kind in kind.split(",")]
    outcomes = run_as(STRANGER, [a for a, _ in attempts])
    return {a.label: (a, want, outcomes[a.label]) for a, want in attempts}


def _inside(stack: LocalPlatform, method: str, port_name: str, path: str) -> tuple[int, str]:
    """The same HTTP request, made by the stack from inside its private network."""
    master = stack.running_processes()["s3-master"]
    port = internal_ports(stack.paths.secrets)[port_name]
    script = ("import sys, urllib.request, urllib.error\n"
              f"req = urllib.request.Request('http://{stack.local.address}:{port}{path}', method='{method}')\n"
              "try:\n    r = urllib.request.urlopen(req, timeout=10)\n    print(r.status, r.read(300).decode())\n"
              "except urllib.error.HTTPError as e:\n    print(e.code, e.read(300).decode())\n")
    done = run_inside(master.pid, [SYSTEM_PYTHON, "-I", "-c", script])
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition(" ")
    return int(status), body


def _keys(stack: LocalPlatform) -> tuple[str, str]:
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    return secrets.s3_access_key.reveal(), secrets.s3_secret_key.reveal()


def test_a_stranger_can_neither_delete_nor_write_nor_see_seaweedfs_and_the_stack_can(stack: LocalPlatform) -> None:
    tried = _as_stranger(stack, "http,tcp")
    wrong = {label: got.detail for label, (_, want, got) in tried.items()
             if (got.reached if want == "refused" else got.detail != want)}
    assert not wrong, wrong
    for label in ("delete the collection at the master", "get a write assigned by the master", "master /dir/status",
                  "master /vol/status", "volume server /status", "write a needle at the volume server",
                  "master.grpc port", "volume.grpc port", "filer.grpc port"):
        assert tried[label][2].detail.startswith("ConnectionRefused"), (label, tried[label])
    for label in ("unsigned S3 delete", "unsigned S3 write", "unsigned S3 listing"):
        assert tried[label][2].detail == "HTTP 403", (label, tried[label])
    # The same ways, taken by the stack: its master answers, and hands it a write.
    assert _inside(stack, "GET", "master", "/dir/status")[0] == 200
    status, body = _inside(stack, "GET", "master", "/dir/assign?collection=cache-not-exposed-probe")
    assert status == 200 and "fid" in json.loads(body), body
    assert _inside(stack, "GET", "master", "/col/delete?collection=cache-not-exposed-probe")[0] in (200, 204)
    assert stack.settings.storage is not None
    assert "succeeded" in s3_round_trip(stack.configs.s3_endpoint, *_keys(stack), stack.settings.storage.bucket)


def test_a_stranger_cannot_read_the_stacks_layers_configs_or_logs_and_the_stack_can(stack: LocalPlatform) -> None:
    pull_with_skopeo("docker.io/library/hello:latest", registries_conf=stack.client_configs().registries_conf)
    tried = _as_stranger(stack, "read")
    labels = set(tried)
    assert {"read config/proxy.conf", "read logs/proxy.access.log", "read data", "read the stack folder"} <= labels
    assert any(label.startswith("read data/s3/volume/") for label in labels), labels
    leaked = {label: got.detail for label, (_, _, got) in tried.items() if got.reached}
    assert not leaked, leaked
    for attempt, _, _ in tried.values():  # the stack reads every one of them
        path = Path(str(attempt.target[0]))
        assert (os.listdir(path) if path.is_dir() else path.read_bytes()[:1]) is not None
    for folder in stack.paths.private:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for file in [stack.paths.config / "proxy.conf", stack.paths.logs / "proxy.access.log", stack.paths.state_file]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stack.paths.exposed() == []


def test_another_stacks_workers_cannot_connect_to_this_stacks_sockets(stack: LocalPlatform, tmp_path: Path) -> None:
    other_root = tmp_path / "other-stack"
    other_root.mkdir()
    other = worker_access(other_root)
    own = stack.paths.access
    assert other.user is not None and own.user is not None and other.user != own.user
    other.prepare(other_root)
    try:
        # A socket in the other stack's folder, as its mirrors would make one.
        listener = socket.socket(socket.AF_UNIX)
        old = os.umask(0o007)
        try:
            listener.bind(str(other.shared / "mirror-1-0.sock"))
        finally:
            os.umask(old)
        listener.listen()
        theirs = Attempt("their socket", "unix", (str(other.shared / "mirror-1-0.sock"),))
        ours = [Attempt(f"our {p.name}", "unix", (str(p),)) for p in [stack.paths.proxy_socket, *stack.mirror_sockets(),
                                                                     stack.paths.fanout_socket,
                                                                     stack.paths.mirror_pass_socket]]
        as_other = run_as(other.user, [theirs, *ours])
        as_own = run_as(own.user, [theirs, *ours])
        listener.close()
        assert as_other["their socket"].reached and not as_own["their socket"].reached
        assert all(as_own[a.label].reached for a in ours), as_own
        assert not any(as_other[a.label].reached for a in ours), as_other
        # verify_policies tries this stack's sockets as every other stack's workers.
        check = cache_not_exposed(stack)
        assert check.status == "pass" and "other stacks' workers" in check.how, check
    finally:
        other.release()
        shutil.rmtree(other.shared, ignore_errors=True)
    assert other.gid is None


def test_status_and_cache_not_exposed_see_a_stranger_getting_in(shared_stack: LocalPlatform) -> None:
    stack = shared_stack  # its fixture checks the stack RUNNING again afterwards
    stack.paths.config.chmod(0o755)
    (stack.paths.config / "proxy.conf").chmod(0o644)
    try:
        condition = stack.status().condition
        assert condition.startswith("DEGRADED: open to other local users") and "proxy.conf" in condition, condition
        check = cache_not_exposed(stack)
        # Under pytest's 0700 temp folders nobody gets that far, but the modes alone are a failure.
        assert check.status == "fail" and "config/proxy.conf is open to others" in check.observed, check
    finally:
        stack.paths.seal()


def test_status_is_degraded_naming_s3_when_storage_fails_objects_the_registry_holds(stack: LocalPlatform) -> None:
    """A bucket of its own on the stack's SeaweedFS, so the shared cache stays whole: a layer is
    stored, then its volumes deleted under it (as `/col/delete` from a stranger did before)."""
    assert stack.settings.storage is not None
    bucket, keys = "exposure-probe", _keys(stack)
    s3 = s3_client(endpoint=stack.configs.s3_endpoint, access_key=keys[0], secret_key=keys[1])
    s3.create_bucket(Bucket=bucket)
    key = "docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data"
    s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(4096))
    probing = LocalPlatform(stack.settings.model_copy(update={"storage": stack.settings.storage.model_copy(
        update={"bucket": bucket, "root_directory": "/"})}), stack.rules)
    try:
        # Stored (a HEAD asks only the filer; a read now would make the gateway remember the volume's
        # place and, after the delete, retry it for 10 s before it answers the error).
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 4096
        assert _inside(stack, "GET", "master", f"/col/delete?collection={bucket}")[0] in (200, 204)
        # Its scratch round trip still passes (new writes get new volumes); the stored layer fails.
        assert "succeeded" in s3_round_trip(stack.configs.s3_endpoint, *keys, bucket, s3=s3)
        with pytest.raises(ClientError, match="InternalError"):
            cached_blob_readable(s3, bucket, "/")
        condition = probing.status().condition
        assert condition.startswith("DEGRADED") and "s3-gateway (S3 answers errors" in condition, condition
    finally:
        for entry in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=entry["Key"])
        s3.delete_bucket(Bucket=bucket)
