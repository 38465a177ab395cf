"""Attempts made as another local user: what `cache-not-exposed`, `status` and the tests try as `nobody`.

Each attempt is one thing a hostile local account would try against the stack: an HTTP request to a
port, a TCP connection, reading a file or listing a folder, connecting to a unix socket. They run in
a child process with that user's uid and gid and no supplementary group, under the system's Python
(`/usr/bin/python3 -I -S`: the project's venv may sit where that user cannot enter). The child's
code is `_CHILD`, a few lines over the socket module, so it starts fast enough for `status`.
"""
from __future__ import annotations

import json
import pwd
import subprocess
from dataclasses import dataclass
from typing import Any

SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Attempt:
    """One try: `kind` is http (target host, port, method, path), tcp (host, port), read (a path) or
    unix (a socket path)."""
    label: str
    kind: str
    target: tuple[object, ...]


@dataclass(frozen=True)
class Outcome:
    reached: bool  # the attempt got through: a connection, an answer, bytes or a listing
    detail: str  # "HTTP <status>", what was read, or the error


# Reads [[label, kind, target], ...] as JSON from argv[1]; prints {label: [reached, detail]}.
_CHILD = r'''
import json, os, socket, sys

def attempt(kind, target):
    try:
        if kind in ("http", "tcp"):
            with socket.create_connection((target[0], int(target[1])), timeout=5) as s:
                if kind == "tcp":
                    return True, "connected"
                s.sendall(f"{target[2]} {target[3]} HTTP/1.0\r\nHost: {target[0]}:{target[1]}\r\n"
                          "Content-Length: 0\r\n\r\n".encode())
                line = s.makefile("rb").readline().decode(errors="replace").split()
                return True, f"HTTP {line[1]}" if len(line) > 1 else "connected, no HTTP answer"
        if kind == "read":
            if os.path.isdir(target[0]):
                return True, f"listed {len(os.listdir(target[0]))} entries"
            with open(target[0], "rb") as f:
                return True, f"read {len(f.read(4096))} bytes"
        if kind == "unix":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(target[0])
                return True, "connected"
        return False, f"unknown kind {kind}"
    except OSError as exc:
        return False, f"{exc.__class__.__name__}: {exc.strerror or exc}"

print(json.dumps({label: attempt(kind, target) for label, kind, target in json.loads(sys.argv[1])}))
'''


def run_as(user: str, attempts: list[Attempt], *, timeout: float = 30) -> dict[str, Outcome]:
    """Make every attempt as `user` (needs root); label -> outcome."""
    entry = pwd.getpwnam(user)
    return _run(attempts, {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}, timeout, f" as {user}")


def run_here(attempts: list[Attempt], *, timeout: float = 30) -> dict[str, Outcome]:
    """The same attempts as this process's own user (a stack run by an ordinary user has no other)."""
    return _run(attempts, {}, timeout, "")


def child_argv(attempts: list[Attempt]) -> list[str]:
    """The command that makes `attempts` as whoever runs it (for `private_network.run_inside`, too)."""
    spec = json.dumps([[a.label, a.kind, list(a.target)] for a in attempts])
    return [SYSTEM_PYTHON, "-I", "-S", "-c", _CHILD, spec]


def outcomes(stdout: str) -> dict[str, Outcome]:
    """What `child_argv`'s command printed: label -> outcome."""
    return {label: Outcome(bool(reached), str(detail)) for label, (reached, detail) in json.loads(stdout).items()}


def _run(attempts: list[Attempt], identity: dict[str, Any], timeout: float, who: str) -> dict[str, Outcome]:
    result = subprocess.run(child_argv(attempts), **identity, capture_output=True, text=True, timeout=timeout,
                            check=False, cwd="/")
    if result.returncode != 0:
        raise RuntimeError(f"the attempts{who} did not run: {result.stderr.strip()[-300:]}")
    return outcomes(result.stdout)
