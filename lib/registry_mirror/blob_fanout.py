"""blob-fanout, the security proxy's companion (Go, lib/blob-fanout/): one upstream fetch of a cold blob,
streamed to every client that asks for it meanwhile. The proxy's blob location sends what its cache
does not hold there, and falls back to the mirror when it does not answer.

It is this project's own code, so it is built from the checkout (the standard library only: no module
download) for linux/amd64, the platform of the local machine and of Cloud Foundry cells, once per
version of its source, into `.tools/blob-fanout-<source hash>/`. The local platform runs that binary;
the Cloud Foundry proxy app carries it in its bits and runs it as a sidecar. The Go release is whatever
is installed (Debian 12's 1.19 is enough): a deploy from the CI task image builds it there.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import PreflightError
from .registry_build import PROJECT_ROOT, TOOLS_DIR

SOURCE = PROJECT_ROOT / "lib" / "blob-fanout"
BINARY = "blob-fanout"
# How long a stop lets the blobs in flight go on (as the registry drains, registry_config.DRAIN_SECONDS).
DRAIN_SECONDS = 9
HEALTH_PATH = "/-/healthy"
# Where the Go toolchain may be when it is not on PATH: the go.dev tarball's place and Debian's.
_GO_CANDIDATES = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")


def source_version(source: Path = SOURCE) -> str:
    """A hash of what the binary is built from (tests excluded): a change to either rebuilds it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.iterdir() if p.name == "go.mod" or
                       (p.suffix == ".go" and not p.name.endswith("_test.go"))):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def fanout_binary(root: Path = TOOLS_DIR, *, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The binary of the current source, built first when it is not there yet; idempotent, and safe when
    several processes ask at once (one builds, the others wait for it)."""
    target = root / f"{BINARY}-{source_version()}" / BINARY
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{BINARY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _build(target, root, log=log)
    return target


def fanout_argv(binary: Path | str, *, listen: str, upstream: str, spool: str | None = None,
                socket_mode: str | None = None) -> list[str]:
    """The command line: `listen` and `upstream` are `unix:<path>` or TCP addresses."""
    argv = [str(binary), "-listen", listen, "-upstream", upstream, "-drain", f"{DRAIN_SECONDS}s"]
    if spool is not None:
        argv += ["-spool", spool]
    if socket_mode is not None:
        argv += ["-socket-mode", socket_mode]
    return argv


def go_command(root: Path = TOOLS_DIR) -> tuple[str, dict[str, str]]:
    """The Go toolchain and the environment to build or test the source with."""
    go = shutil.which("go") or next((p for p in _GO_CANDIDATES if Path(p).exists()), None)
    if go is None:
        raise PreflightError(f"building {BINARY} needs the Go toolchain (`go` is not on PATH); install Go "
                             "(Debian: golang-go), then run `make bootstrap` again")
    # No module download, no toolchain switch, and a cache of its own when the caller has no home
    # (a CI task's environment may have none).
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64", "GOTOOLCHAIN": "local",
           "GOPROXY": "off", "GOFLAGS": "-trimpath"}
    if not os.environ.get("HOME"):
        env |= {"GOCACHE": str(root / "go-cache"), "GOPATH": str(root / "go-path")}
    return go, env


def _build(target: Path, root: Path, *, log) -> None:  # type: ignore[no-untyped-def]
    go, env = go_command(root)
    log(f"building {BINARY} from {SOURCE.relative_to(PROJECT_ROOT)} with {go}")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".build-") as tmp:
        built = Path(tmp) / BINARY
        result = subprocess.run([go, "build", "-o", str(built), "."], cwd=SOURCE, env=env, capture_output=True,
                                text=True, check=False, timeout=600)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise PreflightError(f"go build of {BINARY} failed: {tail[-500:]}")
        target.parent.mkdir(exist_ok=True)
        os.replace(built, target)
    log(f"built {target}")

