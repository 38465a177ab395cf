"""Sample images: deterministic builds, and seeding a real docker-registry 2.8.2 idempotently."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import requests

from registry_mirror.sample_images import (
    MANIFEST_LIST_V2,
    MANIFEST_V2,
    SAMPLE_IMAGES,
    BuiltImage,
    SampleImage,
    SeedError,
    build_image,
    seed_registry,
)

USER = "seeder"
PASSWORD = "correct horse battery staple"
ACCEPT = ", ".join((MANIFEST_LIST_V2, MANIFEST_V2))
STARTUP_DEADLINE_S = 30.0
LOG_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0


# --- building --------------------------------------------------------------------------


def test_build_is_deterministic() -> None:
    for image in SAMPLE_IMAGES:
        first, second = build_image(image), build_image(SampleImage(**_fields(image)))
        assert first.digest == second.digest
        assert first.manifest == second.manifest
        assert first.platform_digests == second.platform_digests
        assert dict(first.blobs) == dict(second.blobs)


def test_single_platform_image_is_a_schema2_manifest() -> None:
    built = build_image(SampleImage("library/hello", "latest", layer_sizes=(2048, 8192)))
    manifest = json.loads(built.manifest)
    assert built.media_type == MANIFEST_V2 == manifest["mediaType"]
    assert manifest["schemaVersion"] == 2
    assert len(manifest["layers"]) == 2
    assert built.platform_digests == {"linux/amd64": built.digest}
    assert built.digest == "sha256:" + hashlib.sha256(built.manifest).hexdigest()


def test_multi_platform_image_is_a_manifest_list_of_its_platforms() -> None:
    built = build_image(SampleImage("library/multiarch", "latest", platforms=("linux/amd64", "linux/arm64/v8")))
    listing = json.loads(built.manifest)
    assert built.media_type == MANIFEST_LIST_V2 == listing["mediaType"]
    assert [child["platform"] for child in listing["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    for entry, child in zip(listing["manifests"], built.platform_manifests, strict=True):
        assert entry["mediaType"] == MANIFEST_V2
        assert entry["digest"] == child.digest == "sha256:" + hashlib.sha256(child.content).hexdigest()
        assert entry["size"] == len(child.content)
        config = json.loads(built.blobs[child.config_digest])
        assert config["architecture"] == entry["platform"]["architecture"]
        assert config["os"] == "linux"
    # Platforms must not share layers, or the benchmark would under-count bytes.
    amd64, arm64 = built.platform_manifests
    assert set(amd64.layer_digests).isdisjoint(arm64.layer_digests)


@pytest.mark.parametrize("image", SAMPLE_IMAGES, ids=lambda image: image.reference)
def test_layers_are_gzipped_tars_whose_diff_ids_match_the_config(image: SampleImage) -> None:
    built = build_image(image)
    for child in built.platform_manifests:
        manifest = json.loads(child.content)
        config = json.loads(built.blobs[child.config_digest])
        assert config["rootfs"] == {"type": "layers", "diff_ids": list(child.diff_ids)}
        assert config["created"] == "2024-01-01T00:00:00Z"
        for layer, diff_id, size in zip(manifest["layers"], child.diff_ids, image.layer_sizes, strict=True):
            blob = built.blobs[layer["digest"]]
            assert layer["size"] == len(blob)
            assert layer["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
            tar_bytes = gzip.decompress(blob)
            assert diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
            with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
                (member,) = tar.getmembers()
                assert member.isfile() and member.size == size and member.mtime == 0
            # Random-looking content: the gzip'd layer is about as big as its file.
            assert size <= len(blob) <= size * 1.01 + 1024


def test_invalid_sample_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="repository"):
        SampleImage("Library/Hello", "latest")
    with pytest.raises(ValueError, match="platform"):
        SampleImage("library/hello", "latest", platforms=("amd64",))


# --- seeding a real registry -----------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    url: str
    log_path: Path

    def requests_logged(self, method: str) -> int:
        """Completed requests with this method, from the registry's JSON log."""
        return sum(1 for entry in _log_entries(self.log_path) if entry.get("http.request.method") == method)

    def flush_log(self) -> None:
        """Wait until every request made so far is in the log, using a unique marker request."""
        marker = f"/v2/flush-{uuid.uuid4().hex}/tags/list"
        requests.get(self.url + marker, auth=(USER, PASSWORD), timeout=5)
        deadline = time.monotonic() + LOG_DEADLINE_S
        while not any(entry.get("http.request.uri") == marker for entry in _log_entries(self.log_path)):
            assert time.monotonic() < deadline, f"registry never logged {marker}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is not installed (Debian package docker-registry)"
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
    config = root / "config.yml"
    config.write_text(
        json.dumps(  # JSON is YAML, and needs no quoting care.
            {
                "version": 0.1,
                # The access log is Apache-format text; off, so every log line is JSON.
                "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": "sample-images-test"},
                "auth": {"htpasswd": {"realm": "sample-images-test", "path": str(htpasswd)}},
            }
        )
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("REGISTRY_")}
    env.pop("AWS_CA_BUNDLE", None)  # docker-registry 2.8.2 can misbehave when it is set.
    log_path = root / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_serving(process, url, log_path)
        yield Registry(url=url, log_path=log_path)
    finally:
        _stop(process)


def test_seed_pushes_once_and_is_idempotent(registry: Registry) -> None:
    seeded = seed_registry(registry.url, (USER, PASSWORD), timeout=10.0)

    assert [(image.repository, image.tag) for image in seeded] == [
        (image.repository, image.tag) for image in SAMPLE_IMAGES
    ]
    for image, result in zip(SAMPLE_IMAGES, seeded, strict=True):
        expected: BuiltImage = build_image(image)
        assert result.pushed
        assert result.digest == expected.digest
        assert result.media_type == expected.media_type
        assert result.platform_digests == expected.platform_digests
        assert result.total_bytes == expected.total_bytes
        response = requests.get(
            f"{registry.url}/v2/{image.repository}/manifests/{image.tag}",
            auth=(USER, PASSWORD),
            headers={"Accept": ACCEPT},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == expected.digest
        assert response.headers["Content-Type"] == expected.media_type
        assert response.content == expected.manifest
    registry.flush_log()
    uploads_after_first = registry.requests_logged("POST")
    puts_after_first = registry.requests_logged("PUT")
    blob_count = sum(len(build_image(image).blobs) for image in SAMPLE_IMAGES)
    assert uploads_after_first == blob_count

    again = seed_registry(registry.url, (USER, PASSWORD), timeout=10.0)

    assert [image.digest for image in again] == [image.digest for image in seeded]
    assert not any(image.pushed for image in again)
    registry.flush_log()
    assert registry.requests_logged("POST") == uploads_after_first
    assert registry.requests_logged("PUT") == puts_after_first


def test_wrong_credentials_raise_seed_error(registry: Registry) -> None:
    image = SAMPLE_IMAGES[0]
    with pytest.raises(SeedError) as caught:
        seed_registry(registry.url, (USER, "wrong password"), images=[image], timeout=10.0)
    message = str(caught.value)
    assert registry.url in message
    assert image.repository in message
    assert "401" in message


def test_unreachable_registry_raises_seed_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(SeedError, match=url):
        seed_registry(url, (USER, PASSWORD), images=[SAMPLE_IMAGES[0]], timeout=2.0)


# --- helpers ---------------------------------------------------------------------------


def _fields(image: SampleImage) -> dict[str, object]:
    return {
        "repository": image.repository,
        "tag": image.tag,
        "platforms": image.platforms,
        "layer_sizes": image.layer_sizes,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{url}/v2/", auth=(USER, PASSWORD), timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"docker-registry did not serve {url} within {STARTUP_DEADLINE_S}s:\n{log_path.read_text()}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_DEADLINE_S)
    assert process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def _log_entries(log_path: Path) -> Iterator[dict[str, object]]:
    """Completed-request records; other lines (startup notices, partial last line) are skipped.

    docker-registry 2.8.2 logs "response completed" for 2xx/3xx and "response completed
    with error" for requests answered with a registry error (404 blob unknown, ...);
    requests refused by htpasswd auth get neither, only an "error authorizing context".
    """
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("msg") in ("response completed", "response completed with error"):
            yield entry


def test_oci_samples_use_oci_media_types_throughout() -> None:
    from registry_mirror.sample_images import OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR_GZIP, OCI_MANIFEST

    index = build_image(SampleImage("library/oci-index", "latest", platforms=("linux/amd64", "linux/arm64"), oci=True))
    assert index.media_type == OCI_INDEX and json.loads(index.manifest)["mediaType"] == OCI_INDEX
    for child in index.platform_manifests:
        manifest = json.loads(child.content)
        assert (child.media_type, manifest["mediaType"], manifest["config"]["mediaType"]) == (OCI_MANIFEST,) * 2 + (OCI_CONFIG,)
        assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER_TAR_GZIP}
    docker = build_image(SampleImage("library/oci-index", "latest", platforms=("linux/amd64", "linux/arm64")))
    assert docker.digest != index.digest and index.total_bytes > 0
