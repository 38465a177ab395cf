"""The app's package: the registry image pinned by digest (docker), or the proxy's nginx.conf and
blob-fanout (bits)."""
from __future__ import annotations

import io
import zipfile
from typing import Any

from ..resources import Resource
from ..space import Component, Space
from ....blob_fanout import BINARY as FANOUT_BINARY, fanout_binary
from ....credentials import Secret, secret_from_env
from ....deploy_report import StepRecorder
from ....errors import DeployError
from ....parameters import Settings

UPLOAD_TIMEOUT_SECONDS = 300.0


def create_package(space: Space, steps: StepRecorder, component: Component, app: Resource,
                   nginx_conf: str) -> Resource:
    """A docker package for the mirror, a bits package for the proxy (a placeholder in a dry run)."""
    name = space.app_name(component)
    registry = space.settings.registry
    result: dict[str, Any] = {"guid": "<planned package>"}

    def docker() -> str:
        # Diego pulls the image as this account, when one is set, not from the shared anonymous allowance.
        password = image_pull_password(space.settings) if registry.image_pull_username else None
        result.update(space.cc.create_docker_package(app, registry.image or "", username=registry.image_pull_username,
                                                     password=password) or {})
        pulled_as = f", pulled as {registry.image_pull_username}" if registry.image_pull_username else ""
        return f"package {result['guid']} ({registry.image}{pulled_as})"

    def bits() -> str:
        created = space.cc.create_bits_package(app)
        assert created is not None  # steps never run in a dry run
        result.update(created)
        space.cc.upload_bits(created, proxy_bits(nginx_conf))
        done = space.cc.session.poll(lambda: space.cc.package(created["guid"]),
                                     lambda p: p["state"] in ("READY", "FAILED"), timeout=UPLOAD_TIMEOUT_SECONDS,
                                     what=f"package {created['guid']}")
        if done["state"] == "FAILED":
            raise DeployError(f"{name}: package {created['guid']} FAILED: "
                              f"{(done.get('data') or {}).get('error') or 'CF gave no reason'}")
        return f"package {created['guid']} (nginx.conf, allow-list inside; blob-fanout)"

    steps.run(name, "create package", docker if component == "registry" else bits)
    return result


def image_pull_password(settings: Settings) -> Secret:
    """The password Diego pulls the registry image with, from the variable the params name."""
    name = settings.registry.image_pull_password_env
    assert name is not None
    return secret_from_env(name, purpose=f"password of {settings.registry.image_pull_username} for pulling the "
                                         "registry image")


def proxy_bits(nginx_conf: str) -> bytes:
    """The proxy app as the nginx buildpack wants it: nginx.conf and mime.types at the root, and
    blob-fanout's binary (built from this checkout) for the sidecar the manifest declares."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("nginx.conf", nginx_conf)
        zf.writestr("mime.types", "types {\n    application/octet-stream bin;\n    application/json json;\n}\n")
        zf.writestr("buildpack.yml", "nginx:\n  version: stable\n")
        binary = zipfile.ZipInfo(FANOUT_BINARY, date_time=(1980, 1, 1, 0, 0, 0))
        binary.external_attr = (0o100755 << 16)  # a regular file, executable: CF keeps the zip's modes
        binary.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(binary, fanout_binary().read_bytes())
    return buffer.getvalue()
