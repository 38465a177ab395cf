"""Docker image references: where an image lives and whether its pinned digest exists there."""
from __future__ import annotations

from dataclasses import dataclass

import requests

from .registry_auth import RegistryAuth

# Every manifest type: the registry then answers what it holds, never a list rewritten to one platform.
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


@dataclass(frozen=True)
class ImageRef:
    repository: str  # as Docker Hub's API names it: library/registry
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, reference: str) -> ImageRef:
        name, _, digest = reference.partition("@")
        tag = None
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = name.rsplit(":", 1)
        for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
            name = name.removeprefix(prefix)
        if "/" not in name:
            name = f"library/{name}"  # official images live under library/ on Docker Hub
        return cls(name, tag, digest or None)


def resolve_digest(registry_url: str, reference: str, *, username: str | None = None,
                   password: str | None = None, timeout: float = 15) -> bool:
    """True when the registry has the reference's pinned digest; raises when the registry cannot be asked."""
    ref = ImageRef.parse(reference)
    if ref.digest is None:
        return False
    session = requests.Session()
    session.trust_env = False
    session.auth = RegistryAuth(username, password)
    resp = session.head(f"{registry_url}/v2/{ref.repository}/manifests/{ref.digest}",
                        headers={"Accept": MANIFEST_ACCEPT}, timeout=timeout)
    if resp.status_code in (200, 404):
        return resp.status_code == 200
    raise RuntimeError(f"{registry_url} answered {resp.status_code} for {ref.repository}@{ref.digest}")
