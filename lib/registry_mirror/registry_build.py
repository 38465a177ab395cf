"""The registry that production pins, built from the Go module proxy into a project-local folder.

Production runs the `registry:<version>` image; no Debian package has 3.x, so bootstrap builds the same
release from its Go module (`go install ...@v<version>`) once, into `.tools/registry-<version>/`, and
records the binary's version and checksum next to it. The local platform runs that binary, and the
pinning check compares what runs with what was built.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PreflightError

MODULE = "github.com/distribution/distribution/v3/cmd/registry"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = PROJECT_ROOT / ".tools"


@dataclass(frozen=True)
class RegistryBuild:
    """What bootstrap built: the binary, the module version it came from, and its checksum."""
    version: str
    module: str
    binary: str
    sha256: str
    go_version: str

    def verify(self) -> None:
        """The binary is still the one built (a hand-replaced binary would otherwise pass as pinned)."""
        if not Path(self.binary).exists():
            raise PreflightError(f"{self.binary} is missing; run `make bootstrap`")
        if file_sha256(Path(self.binary)) != self.sha256:
            raise PreflightError(f"{self.binary} differs from what bootstrap built (checksum); run `make bootstrap`")


def uses_debian_package(version: str) -> bool:
    """2.8.2 is Debian 12's docker-registry; every 3.x release is built from its Go module."""
    return version.split(".")[0] == "2"


def build_dir(version: str, root: Path = TOOLS_DIR) -> Path:
    return root / f"registry-{version}"


def built_registry(version: str, root: Path = TOOLS_DIR, *, folder: Path | None = None) -> RegistryBuild | None:
    """The recorded build of `version` (in `folder`, by default the registry's), or None when bootstrap has
    not built it."""
    record = (folder or build_dir(version, root)) / "build.json"
    try:
        return RegistryBuild(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def build_registry(version: str, root: Path = TOOLS_DIR, *, log=print) -> RegistryBuild:  # type: ignore[no-untyped-def]
    """`go install` the registry at `version` unless that exact build is already there; idempotent."""
    existing = built_registry(version, root)
    if existing is not None:
        try:
            existing.verify()
            return existing
        except PreflightError:
            log(f"registry {version}: the recorded binary changed; building it again")
    log(f"building registry v{version} from the Go module proxy ({MODULE}); the first build takes a few minutes")

    def reports_version(built: Path) -> None:
        reported = subprocess.run([str(built), "--version"], capture_output=True, text=True, check=False,
                                  timeout=30).stdout
        if f"v{version}" not in reported:
            raise PreflightError(f"the built registry reports {reported.strip()!r}, not v{version}")

    return go_install(MODULE, f"v{version}", "registry", build_dir(version, root), check=reports_version, log=log)


def go_install(module: str, version: str, name: str, target: Path, *,
               check=None, log=print) -> RegistryBuild:  # type: ignore[no-untyped-def]
    """`go install module@version` into `target`/`name`, recording version, checksum and Go release."""
    go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(p).exists()),
                                    None)
    if go is None:
        raise PreflightError(f"building {name} needs the Go toolchain (`go` is not on PATH); install Go, "
                             "then run `make bootstrap` again")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        env = {**os.environ, "GOBIN": tmp, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -modcacherw"}
        result = subprocess.run([go, "install", f"{module}@{version}"], env=env, capture_output=True, text=True,
                                check=False, timeout=1800)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise PreflightError(f"go install {module}@{version} failed: {tail[-500:]}")
        built = Path(tmp) / name
        if check is not None:
            check(built)
        go_version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout
        target.mkdir(exist_ok=True)
        binary = target / name
        shutil.move(str(built), binary)
    # The real path: .tools may be a link (a git worktree shares its main checkout's), and what is
    # compared with it later (a process's /proc/<pid>/exe) is always the real path.
    record = RegistryBuild(version=version.removeprefix("v"), module=module, binary=str(binary.resolve()),
                           sha256=file_sha256(binary), go_version=go_version.strip())
    (target / "build.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    log(f"built {binary} (sha256 {record.sha256[:16]}...)")
    return record


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
