"""The nbmake pass: every runbook under nbmake with its default parameters (the local platform, every
gate closed), after `make demo` has brought up the stack those defaults name, and `make down` after.

Those defaults are the developer's own stack: `.state/local` and port 8080. So the pass runs in a
throwaway copy of the project (its own `.state`, `.out` and results files; PYTHONPATH on the copy's
lib/ so the library's project root is the copy; .venv and .tools linked, not rebuilt) inside a
private network namespace (its own loopback, so 8080 there is not 8080 here). Every process started
in that namespace is checked gone by PID afterwards. Where no namespace can be made, the test fails
rather than run on the default ports.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from registry_mirror.platforms.local.state import StackState
from tests.support import throwaway_copy

pytestmark = pytest.mark.nbmake
ROOT = Path(__file__).resolve().parents[2]


def test_every_notebook_runs_with_its_defaults_in_a_throwaway_copy() -> None:
    unshare = private_network_command()
    # A short folder: the stack's unix sockets live under it, and a socket path has 107 bytes at most.
    tmp_path = Path(tempfile.mkdtemp(prefix="nbmake-"))
    copy = throwaway_copy(ROOT, tmp_path / "project")
    namespace_file = tmp_path / "netns"
    env = {**os.environ, "PYTHONPATH": str(copy / "lib"), "NAMESPACE_FILE": str(namespace_file)}
    # -o bootstrap: the copy shares the venv and tools this run was bootstrapped with; nothing is installed.
    inner = ('ip link set lo up && readlink /proc/self/ns/net > "$NAMESPACE_FILE" && '
             'exec make -s -o bootstrap nbmake-in-place NBMAKE_THROWAWAY=1')
    try:
        run = subprocess.run([*unshare, "sh", "-c", inner], cwd=copy, env=env, capture_output=True, text=True,
                             timeout=1500)
    finally:
        left = leftovers(copy, namespace_file)
    assert run.returncode == 0, f"{copy}: " + run.stdout[-4000:] + run.stderr[-3000:]
    notebooks = sorted((copy / "notebooks").glob("*.ipynb"))
    assert f"{len(notebooks)} passed" in run.stdout, run.stdout[-2000:]
    assert (copy / ".state" / "local" / "stack.json").exists(), "the pass did not deploy in the copy"
    assert not left, f"processes of the nbmake pass left running (killed now): {left}"
    shutil.rmtree(tmp_path)  # kept when the pass failed, to read its logs


def private_network_command() -> list[str]:
    """unshare's command line for a private network namespace, or a failed test saying why there is none."""
    as_root = os.geteuid() == 0
    command = ["unshare", "--net"] if as_root else ["unshare", "--user", "--map-current-user", "--net"]
    probe = subprocess.run([*command, "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.fail("the nbmake pass runs the default stack (port 8080, .state/local) only inside a private network "
                    f"namespace, and `{' '.join(command)}` cannot make one here ({probe.stderr.strip()[:200]}); "
                    "run the tests as root, as CI does", pytrace=False)
    return command


def leftovers(copy: Path, namespace_file: Path) -> list[str]:
    """Every process still in the pass's namespace, still recorded by the copy's stack, or still running
    from the copy; each is killed, and named for the assertion."""
    found: dict[int, str] = {}
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            in_namespace = namespace is not None and os.readlink(proc / "ns" / "net") == namespace
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if in_namespace or str(copy) in argv:
            found[int(proc.name)] = argv[:120]
    state = copy / ".state" / "local" / "stack.json"
    if state.exists():
        for record in StackState.load(state).processes.values():
            if record.alive():
                found[record.pid] = record.name
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [f"{argv} (pid {pid})" for pid, argv in found.items()]
