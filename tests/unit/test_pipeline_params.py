"""The params a pipeline task runs with: the digest the registry-image resource hands over, digest only."""
from __future__ import annotations

from pathlib import Path

from registry_mirror.pipeline_params import task_params
from registry_mirror.parameters import validate_settings

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32


def test_the_pipeline_digest_makes_a_digest_only_reference(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("allow: [10.0.0.0/8]\ndeny: []\ntrusted_routers: [10.1.0.0/24]\n")
    data = task_params(ROOT / "params/production.yaml", security_rules=rules, image_digest=DIGEST + "\n")
    # Cloud Foundry's stager (containers/image) refuses name:tag@digest; the version stays registry.version.
    assert data["registry"]["image"] == f"registry@{DIGEST}"
    assert validate_settings(data, source="test").registry.version == "3.1.2"
