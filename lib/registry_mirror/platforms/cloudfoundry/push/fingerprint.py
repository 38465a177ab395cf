"""What the running app was deployed from, recorded as an annotation once its instances serve.

Metadata makes no revision, where an env change after a deployment would make every restart a new
one. A deploy whose inputs match the recorded fingerprint is skipped, but only while the instances
serve.
"""
from __future__ import annotations

import hashlib

from ....blob_fanout import source_version
from ..resources import CloudController, Resource
from ..space import Component

FINGERPRINT = "registry-mirror.cloud.gov/fingerprint"  # annotation: the inputs the running app was deployed from
LEGACY_DIGEST_VAR = "MIRROR_RUNBOOK_DIGEST"  # where earlier versions kept it, in the env: removed on deploy


def fingerprint(component: Component, manifest: str, image: str, nginx_conf: str, secret_env: dict[str, str]) -> str:
    material = [component, manifest, image]
    if component == "proxy":
        material += [nginx_conf, f"blob-fanout {source_version()}"]
    # Hashes of secrets, so rotating a key redeploys; the values never leave this process.
    material += [hashlib.sha256(f"{k}={v}".encode()).hexdigest() for k, v in sorted(secret_env.items())]
    return hashlib.sha256("\n".join(material).encode()).hexdigest()[:20]


def recorded(app: Resource) -> str | None:
    return ((app.get("metadata") or {}).get("annotations") or {}).get(FINGERPRINT)


def record(cc: CloudController, app: Resource, value: str | None) -> str:
    """Record the fingerprint (None forgets it, so the next deploy applies the params again)."""
    cc.annotate(app, FINGERPRINT, value)
    return "recorded" if value else "removed"
