"""SeaweedFS's private network: a network namespace the stack creates, with a loopback of its own.

SeaweedFS's master, volume server and filer answer HTTP and gRPC on TCP ports, and its only
address check (`-whiteList`) compares the caller's address: on the machine's loopback, 127.0.0.1 is
every local user's address, so any of them could delete a collection, get a write assigned or read
the topology. Inside a namespace of its own nobody else has a route to those ports at all. Only the
S3 gateway's unix socket (in the stack's 0700 run folder) crosses over, and the stack's own relay
(`s3_relay`) puts it on the S3 port the mirrors use, where every request must carry the stack's keys.

Root creates the namespace directly; an ordinary user does it inside a user namespace of its own
(its processes are "root" only there). The first process started in it (the master) holds it; the
others join it by that pid, so it lives exactly as long as SeaweedFS does: nothing to clean up.
They may join only once the holder `holds_network`: until then its pid is still `unshare` in the
namespace of whoever started it, and nsenter would put them there, on that network's loopback.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .daemons import require


def create_argv(argv: Sequence[str]) -> list[str]:
    """`argv` started in a new network namespace whose loopback is up."""
    own_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    # exec twice: the recorded pid ends up being the program's own.
    return [require("unshare"), *own_user, "--net", "--", "/bin/sh", "-c",
            f'{require("ip")} link set lo up && exec "$@"', "private-network", *argv]


def holds_network(holder: int, argv: Sequence[str]) -> bool:
    """Whether `holder`, started with `create_argv(argv)`, has created its namespace and brought its
    loopback up: it runs `argv` itself only after both (the wrapper execs it last).

    Before that, `enter_argv(holder, ...)` joins the namespace the holder was started in. Measured:
    about 1 start in 50 when the second process follows at once, and that one then runs outside
    (a volume server that never reaches its master: every S3 write hangs, unanswered)."""
    try:
        running = Path(f"/proc/{holder}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    return running == [os.fsencode(arg) for arg in argv]


def enter_argv(holder: int, argv: Sequence[str]) -> list[str]:
    """`argv` started in the network namespace `holder` (a pid) runs in; see `holds_network`."""
    # --preserve-credentials: an unprivileged user namespace refuses the setgroups nsenter would do.
    own_user = [] if os.geteuid() == 0 else ["--user", "--preserve-credentials"]
    return [require("nsenter"), f"--target={holder}", *own_user, "--net", "--", *argv]


def run_inside(holder: int, argv: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a short command inside the namespace of `holder`, as the stack (for its own probes)."""
    return subprocess.run(enter_argv(holder, argv), capture_output=True, text=True, timeout=timeout, check=False)


def available() -> str | None:
    """Why this user cannot create a private network namespace here, or None when it can."""
    try:
        result = subprocess.run(create_argv(["true"]), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or f"exit {result.returncode}")
