"""Test helpers shared by the integration and notebook tests."""
from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from registry_mirror.http_clients import client_from

from registry_mirror.local_platform import LocalPlatform, StackState
from registry_mirror.parameters import Settings, load_params_file
from registry_mirror.processes import ProcessRecord, free_port, gone

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


@contextmanager
def private_stack(settings: Settings) -> Iterator[LocalPlatform]:
    """A stack of the test's own, deployed; afterwards every process it ever recorded is gone, its
    leftovers (an nginx master's workers) included. Frozen processes (SIGSTOP) are woken first."""
    platform = LocalPlatform(settings, settings.load_security_rules())
    seen: dict[str, ProcessRecord] = {}

    def recorded() -> dict[str, ProcessRecord]:
        return dict(StackState.load(platform.paths.state_file).processes)

    try:
        platform.deploy()
        yield platform
    finally:
        seen.update(recorded())
        for record in seen.values():
            if record.alive():
                os.kill(record.pid, signal.SIGCONT)
        platform.down()
        left = [f"{r.name} (pid {r.pid})" for r in [*seen.values(), *recorded().values()] if not gone(r)]
        assert not left, f"processes left running: {left}"
