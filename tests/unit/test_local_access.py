"""Who may reach a local stack's files, sockets and SeaweedFS, decided without running anything."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from registry_mirror.platforms.local import private_network
from registry_mirror.platforms.local.paths import StackPaths
from registry_mirror.platforms.local.stranger import Attempt, run_here
from registry_mirror.platforms.local.worker_access import OWNER_FILE, STACK_ID_FILE, WORKER_USER_PREFIX, worker_access
from registry_mirror.processes import wait_until


def test_each_root_run_stack_has_a_worker_user_of_its_own(tmp_path: Path) -> None:
    a, b = worker_access(tmp_path / "a", euid=0), worker_access(tmp_path / "b", euid=0)
    assert a.user and b.user and a.user != b.user and a.shared != b.shared
    assert a.user.startswith(WORKER_USER_PREFIX) and len(a.user) <= 32  # useradd's limit
    assert worker_access(tmp_path / "a", euid=0) == a  # the same stack, the same user, every time
    ordinary = worker_access(tmp_path / "a", euid=1000)
    assert ordinary.user is None and ordinary.shared == tmp_path / "a" / "run" and ordinary.mode == 0o700


def test_seal_closes_the_stacks_own_files_and_leaves_the_client_configs_open(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "stack")
    for folder in (paths.root, paths.config, paths.logs, paths.client_dir, paths.data / "s3" / "volume"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    for file in (paths.config / "proxy.conf", paths.logs / "proxy.access.log", paths.data / "s3" / "volume" / "1.dat",
                 paths.client_dir / "registries.conf"):
        file.write_text("x")
        file.chmod(0o644)
    assert {"config is open to others (0o755)", "config/proxy.conf is open to others (0o644)"} <= set(paths.exposed())
    paths.seal()
    assert paths.exposed() == []
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o711
    assert stat.S_IMODE((paths.data / "s3" / "volume" / "1.dat").stat().st_mode) == 0o600
    assert stat.S_IMODE((paths.client_dir / "registries.conf").stat().st_mode) == 0o644


def test_a_file_in_a_closed_folder_is_not_reported_as_reachable(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "stack")
    paths.config.mkdir(parents=True)
    paths.root.chmod(0o711)
    paths.config.chmod(0o700)
    (paths.config / "mirror-9-0.yml").write_text("x")
    (paths.config / "mirror-9-0.yml").chmod(0o644)
    assert paths.exposed() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="creates a network namespace as root")
def test_the_private_network_has_a_loopback_of_its_own() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as outside:
        port = outside.getsockname()[1]
        assert run_here([Attempt("outside", "tcp", ("127.0.0.1", port))])["outside"].reached
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        inside = subprocess.run(private_network.create_argv(["/usr/bin/python3", "-I", "-c", probe]),
                                capture_output=True, text=True, timeout=30)
    assert inside.returncode != 0 and "ConnectionRefused" in inside.stderr, inside
    assert private_network.available() is None


def test_a_stack_made_again_at_the_same_path_finds_none_of_the_old_ones_caches(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    access = worker_access(root)
    root.mkdir()
    access.prepare(root)
    try:
        cached = access.shared / "proxy-blob-cache" / "entry"
        cached.parent.mkdir(exist_ok=True)
        cached.write_text("a tag list fetched by the old stack")
        access.prepare(root)  # the same stack deploying again keeps its caches
        assert cached.exists()
        shutil.rmtree(root)
        root.mkdir()
        access.prepare(root)
        assert not cached.exists()
        assert access.shared.is_dir() and stat.S_IMODE(access.shared.stat().st_mode) == access.mode
        if access.user is not None:
            # A record from before stack identities names the path alone: kept for a stack that has been
            # deployed, dropped for one that never was.
            for fresh, kept in ((False, True), (True, False)):
                cached.parent.mkdir(exist_ok=True)
                cached.write_text("cached")
                (access.shared / OWNER_FILE).write_text(str(root.resolve()))
                (root / STACK_ID_FILE).unlink()
                access.prepare(root, fresh=fresh)
                assert cached.exists() == kept
    finally:
        access.release()
        if access.shared.exists():
            shutil.rmtree(access.shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="creates a network namespace as root")
def test_a_part_joins_the_private_network_once_its_holder_holds_it() -> None:
    # Joined before the holder has made its namespace, a part would run in the starter's network.
    argv = ["/usr/bin/sleep", "30"]
    holder = subprocess.Popen(private_network.create_argv(argv))
    try:
        wait_until(lambda: private_network.holds_network(holder.pid, argv), timeout=10, what="the private network")
        joined = subprocess.run(private_network.enter_argv(holder.pid, ["readlink", "/proc/self/ns/net"]),
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        assert joined == os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        holder.kill()
        holder.wait()
    assert not private_network.holds_network(os.getpid(), argv)  # a process running something else
    assert not private_network.holds_network(holder.pid, argv)  # one that is gone
