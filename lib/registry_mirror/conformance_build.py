"""The OCI distribution-spec conformance suite, built from its Go module into a project-local folder.

`make test` runs it against the local stack's public endpoint (tests/integration/test_oci_conformance.py).
The module has no releases: the pin is a pseudo-version, built once by bootstrap into
`.tools/oci-conformance-<pin>/` with its checksum recorded, like the registry (registry_build.py).
"""
from __future__ import annotations

from pathlib import Path

from .errors import PreflightError
from .registry_build import TOOLS_DIR, RegistryBuild, built_registry, go_install

MODULE = "github.com/opencontainers/distribution-spec/conformance"
VERSION = "v0.0.0-20260831232431-97274622c111"
NAME = "conformance"


def conformance_dir(root: Path = TOOLS_DIR) -> Path:
    return root / f"oci-conformance-{VERSION.removeprefix('v')}"


def built_conformance(root: Path = TOOLS_DIR) -> RegistryBuild | None:
    """The recorded build, verified against its checksum, or None when bootstrap has not built it."""
    record = built_registry(VERSION.removeprefix("v"), root, folder=conformance_dir(root))
    if record is None:
        return None
    try:
        record.verify()
    except PreflightError:
        return None
    return record


def build_conformance(root: Path = TOOLS_DIR, *, log=print) -> RegistryBuild:  # type: ignore[no-untyped-def]
    """Build the pinned suite unless that exact build is already there; idempotent."""
    existing = built_conformance(root)
    if existing is not None:
        return existing
    log(f"building the OCI conformance suite {VERSION} from the Go module proxy ({MODULE})")
    return go_install(MODULE, VERSION, NAME, conformance_dir(root), log=log)
