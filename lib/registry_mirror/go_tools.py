"""Go programs the tests and benchmarks run as real clients, pinned, built from the Go module proxy into
`.tools/<name>-<version>/` once by bootstrap, each with its checksum recorded like the registry's
(registry_build.py): the OCI distribution-spec conformance suite, and crane (go-containerregistry), a
client that sends its Accept types on one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import PreflightError
from .registry_build import TOOLS_DIR, RegistryBuild, built_registry, go_install


@dataclass(frozen=True)
class GoTool:
    name: str  # the binary
    module: str
    version: str  # a release, or a pseudo-version where the module has none
    folder: str

    def directory(self, root: Path = TOOLS_DIR) -> Path:
        return root / f"{self.folder}-{self.version.removeprefix('v')}"


PINNED: dict[str, GoTool] = {
    "conformance": GoTool("conformance", "github.com/opencontainers/distribution-spec/conformance",
                          "v0.0.0-20260831232431-97274622c111", "oci-conformance"),
    "crane": GoTool("crane", "github.com/google/go-containerregistry/cmd/crane", "v0.22.1", "crane"),
}


def built_tool(name: str, root: Path = TOOLS_DIR) -> RegistryBuild | None:
    """The recorded build of a pinned tool, verified against its checksum; None when bootstrap has not
    built it (or the binary changed since)."""
    tool = PINNED[name]
    record = built_registry(tool.version.removeprefix("v"), root, folder=tool.directory(root))
    if record is None:
        return None
    try:
        record.verify()
    except PreflightError:
        return None
    return record


def build_tool(name: str, root: Path = TOOLS_DIR, *, log=print) -> RegistryBuild:  # type: ignore[no-untyped-def]
    """Build a pinned tool unless that exact build is already there; idempotent."""
    existing = built_tool(name, root)
    if existing is not None:
        return existing
    tool = PINNED[name]
    log(f"building {tool.name} {tool.version} from the Go module proxy ({tool.module})")
    return go_install(tool.module, tool.version, tool.name, tool.directory(root), log=log)
