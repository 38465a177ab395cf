"""Attempts made as another local user: what `cache-not-exposed` and the tests try as `nobody`.

Each attempt is one thing a hostile local account would try against the stack: an HTTP request to a
port, a TCP connection, reading a file or listing a folder, connecting to a unix socket. They run in
a child process with that user's uid and gid and no supplementary group, under the system's Python
(`/usr/bin/python3 -I`: the project's venv may sit where that user cannot enter), which runs this
very file as a script; so the part below `run_as` uses the standard library only.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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
    detail: str  # the HTTP status, what was read, or the error


def run_as(user: str, attempts: list[Attempt], *, timeout: float = 30) -> dict[str, Outcome]:
    """Make every attempt as `user` (needs root); label -> outcome."""
    import pwd

    entry = pwd.getpwnam(user)
    spec = json.dumps([[a.label, a.kind, list(a.target)] for a in attempts])
    # The source as an argument: the file itself may sit where that user cannot read it.
    result = subprocess.run([SYSTEM_PYTHON, "-I", "-c", Path(__file__).read_text(), spec],
                            user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], capture_output=True, text=True,
                            timeout=timeout, check=False, cwd="/")
    if result.returncode != 0:
        raise RuntimeError(f"the attempts as {user} did not run: {result.stderr.strip()[-300:]}")
    return {label: Outcome(bool(reached), str(detail)) for label, (reached, detail) in json.loads(result.stdout).items()}


def attempt(kind: str, target: list[object]) -> tuple[bool, str]:
    """Make one attempt as the current user."""
    try:
        if kind == "http":
            host, port, method, path = target
            conn = http.client.HTTPConnection(str(host), int(port), timeout=5)  # type: ignore[call-overload]
            try:
                conn.request(str(method), str(path))
                return True, f"HTTP {conn.getresponse().status}"
            finally:
                conn.close()
        if kind == "tcp":
            host, port = target
            with socket.create_connection((str(host), int(port)), timeout=5):  # type: ignore[call-overload]
                return True, "connected"
        if kind == "read":
            path = str(target[0])
            if os.path.isdir(path):
                return True, f"listed {len(os.listdir(path))} entries"
            with open(path, "rb") as f:
                return True, f"read {len(f.read(4096))} bytes"
        if kind == "unix":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(target[0]))
                return True, "connected"
        return False, f"unknown kind {kind}"
    except OSError as exc:
        return False, f"{exc.__class__.__name__}: {exc.strerror or exc}"


def _main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    print(json.dumps({label: attempt(kind, target) for label, kind, target in spec}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
