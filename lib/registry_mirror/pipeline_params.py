"""The params file a pipeline task runs a runbook with: the repository's params/<env>.yaml plus what
the pipeline's resources hand the task (never secrets: those stay in the environment).

The registry image digest comes from the `registry-image` resource, so production deploys exactly
the digest staging verified; the security rules come from the private resource's file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ParameterError
from .image_refs import ImageRef
from .parameters import validate_settings


def task_params(source: Path, *, security_rules: Path | None = None, image_digest: str | None = None) -> dict[str, Any]:
    """`source` with the rules file and the image digest set; validated before it is returned."""
    data = yaml.safe_load(source.read_text())
    if not isinstance(data, dict):
        raise ParameterError(f"{source}: not a params mapping")
    if security_rules is not None:
        data["proxy"]["security_rules_file"] = str(security_rules)
    if image_digest is not None:
        digest = image_digest.strip()
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise ParameterError(f"registry image digest from the pipeline is not a sha256 digest: {digest[:80]!r}")
        ref = ImageRef.parse(data["registry"]["image"] or "registry")
        # Digest only: Cloud Foundry's stager refuses a tag with a digest; the version is registry.version.
        data["registry"]["image"] = f"{ref.repository.removeprefix('library/')}@{digest}"
    validate_settings(data, source=str(source))
    return data


def write_task_params(source: Path, out: Path, *, security_rules: Path | None = None,
                      image_digest_file: Path | None = None) -> Path:
    digest = image_digest_file.read_text() if image_digest_file is not None else None
    out.write_text(yaml.safe_dump(task_params(source, security_rules=security_rules, image_digest=digest),
                                  sort_keys=False))
    return out
