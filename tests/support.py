"""Test helpers shared by the integration and notebook tests."""
from __future__ import annotations

import hashlib
from typing import Any

import requests

from registry_mirror.http_clients import client_from

from registry_mirror.parameters import Settings, load_params_file
from registry_mirror.processes import free_port

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
])


def local_test_settings(state_dir: str) -> Settings:
    """params/local.yaml on free ports and a private state dir, so a user's own stack is never touched."""
    base = load_params_file("params/local.yaml")
    assert base.local is not None
    ports = set()
    while len(ports) < 4:
        ports.add(free_port())
    public, hub, token, s3 = sorted(ports)
    local = base.local.model_copy(update={"public_port": public, "hub_port": hub, "hub_token_port": token,
                                          "s3_port": s3, "state_dir": state_dir})
    upstream = base.upstream.model_copy(update={"url": f"http://127.0.0.1:{hub}"})
    return base.model_copy(update={"local": local, "upstream": upstream})


def settings_as_parameters(settings: Settings) -> dict[str, Any]:
    """The settings as papermill parameters (what `-f params/<env>.yaml` would inject)."""
    return settings.model_dump(mode="json")


def client(source: str = "127.0.0.1") -> requests.Session:
    return client_from(source)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
