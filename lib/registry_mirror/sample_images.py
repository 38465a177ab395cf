"""Deterministic sample images, built in memory and pushed over the Registry HTTP API v2.

The local Docker Hub stand-in (Debian's docker-registry on filesystem storage, behind a
token service as auth.docker.io) needs content to serve, and there is no Docker engine to build or push any.
Every byte of a sample image is derived from its repository, tag, platform and layer
index, so the same SampleImage always has the same digests: callers and tests can
know what the registry must hold without asking it, and seeding twice pushes nothing.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import quote, urljoin

import requests

from .errors import RunbookError
from .image_refs import MANIFEST_ACCEPT
from .registry_auth import RegistryAuth

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST_V2 = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# An artifact's config when it has none (image-spec, "Guidance for an Empty Descriptor").
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
# The media types of each format: (manifest, list or index, config, layer).
_DOCKER_TYPES = (MANIFEST_V2, MANIFEST_LIST_V2, IMAGE_CONFIG_V1, LAYER_TAR_GZIP)
_OCI_TYPES = (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER_TAR_GZIP)

# A fixed creation time keeps the config blob, and so every digest above it, stable.
CREATED = "2024-01-01T00:00:00Z"

# Distribution's own grammar; SAMPLE_IMAGES below is validated at import, so these come first.
_REPOSITORY_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_PLATFORM_RE = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?")


class SeedError(RunbookError):
    """The registry refused, or could not be reached for, one step of seeding."""


@dataclass(frozen=True)
class SampleImage:
    """What to generate: one tag, one manifest per platform (Docker schema2, or OCI when `oci`; several
    make a manifest list, or an OCI image index), these layer sizes."""

    repository: str
    tag: str
    platforms: tuple[str, ...] = ("linux/amd64",)
    layer_sizes: tuple[int, ...] = (4096,)
    oci: bool = False

    def __post_init__(self) -> None:
        # Reject bad names here, where the mistake is made, not as a registry 400 later.
        if not _REPOSITORY_RE.fullmatch(self.repository):
            raise ValueError(f"SampleImage repository {self.repository!r} is not a valid repository name")
        if not _TAG_RE.fullmatch(self.tag):
            raise ValueError(f"SampleImage tag {self.tag!r} is not a valid tag")
        if not self.platforms:
            raise ValueError(f"SampleImage {self.reference} needs at least one platform")
        if len(set(self.platforms)) != len(self.platforms):
            raise ValueError(f"SampleImage {self.reference} lists a platform twice: {self.platforms}")
        for platform in self.platforms:
            if not _PLATFORM_RE.fullmatch(platform):
                raise ValueError(f"SampleImage {self.reference} platform {platform!r} is not os/arch[/variant]")
        if not self.layer_sizes or any(size < 0 for size in self.layer_sizes):
            raise ValueError(f"SampleImage {self.reference} needs one or more layer sizes >= 0")

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class BuiltManifest:
    """One platform's schema2 manifest and the blobs it references."""

    platform: str
    content: bytes = field(repr=False)
    digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]
    media_type: str = MANIFEST_V2

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class BuiltImage:
    """Everything a push needs: blobs by digest, per-platform manifests and the top manifest.

    For a single platform the top manifest is that platform's schema2 manifest; for
    several it is a manifest list over them.
    """

    repository: str
    tag: str
    media_type: str
    manifest: bytes = field(repr=False)
    digest: str
    platform_manifests: tuple[BuiltManifest, ...]
    blobs: Mapping[str, bytes] = field(repr=False, hash=False)

    @property
    def platform_digests(self) -> dict[str, str]:
        return {child.platform: child.digest for child in self.platform_manifests}

    @property
    def total_bytes(self) -> int:
        """Bytes the registry stores for this image: blobs, platform manifests and any list."""
        size = sum(len(blob) for blob in self.blobs.values())
        size += sum(child.size for child in self.platform_manifests)
        if len(self.platform_manifests) > 1:
            size += len(self.manifest)
        return size


@dataclass(frozen=True)
class SeededImage:
    """What the registry holds for one sample image after seeding.

    `pushed` is False when the tag already pointed at the expected digest and nothing
    was sent.
    """

    repository: str
    tag: str
    digest: str
    media_type: str
    platform_digests: dict[str, str] = field(hash=False)
    total_bytes: int
    pushed: bool = False


SAMPLE_IMAGES: tuple[SampleImage, ...] = (
    SampleImage("library/hello", "latest", layer_sizes=(2048, 8192)),
    SampleImage("library/multiarch", "latest", platforms=("linux/amd64", "linux/arm64")),
    SampleImage("library/alpine-sample", "3.20", layer_sizes=(1024 * 1024,)),
)


def build_image(image: SampleImage) -> BuiltImage:
    """Generate an image's blobs and manifests; pure and deterministic, no I/O."""
    blobs: dict[str, bytes] = {}
    children = tuple(_build_platform(image, platform, blobs) for platform in image.platforms)
    if len(children) == 1:
        only = children[0]
        return BuiltImage(image.repository, image.tag, only.media_type, only.content, only.digest, children, blobs)
    list_type = (_OCI_TYPES if image.oci else _DOCKER_TYPES)[1]
    manifest_list = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": list_type,
            "manifests": [
                {
                    "mediaType": child.media_type,
                    "size": child.size,
                    "digest": child.digest,
                    "platform": _platform_fields(child.platform),
                }
                for child in children
            ],
        }
    )
    return BuiltImage(
        image.repository, image.tag, list_type, manifest_list, _digest(manifest_list), children, blobs
    )


def seed_registry(
    base_url: str,
    auth: tuple[str, str] | None = None,
    images: Sequence[SampleImage] = SAMPLE_IMAGES,
    *,
    timeout: float = 30.0,
) -> list[SeededImage]:
    """Make each image's tag point at its expected digest, pushing only what is missing.

    Images are built one at a time so only one image's blobs are in memory at once.
    """
    with requests.Session() as session:
        # Answers a Basic challenge and Docker Hub's Bearer token flow alike.
        session.auth = RegistryAuth(*auth) if auth is not None else RegistryAuth(None, None)
        client = _RegistryClient(session, base_url.rstrip("/"), timeout)
        return [_seed_one(client, build_image(image)) for image in images]


@dataclass(frozen=True)
class SampleReferrer:
    """An artifact attached to a subject image (a signature, an SBOM), as a client attaches one in a
    registry without the referrers API: the artifact's manifest, with the subject named in it, and the
    subject's referrers tag schema (`sha256-<hex>`), an OCI index listing every such artifact."""

    subject: SampleImage
    artifact_type: str
    payload: bytes = b"sample artifact"


@dataclass(frozen=True)
class BuiltReferrer:
    """One artifact's manifest and blobs, and the subject it refers to."""

    subject_repository: str
    subject_digest: str
    artifact_type: str
    manifest: bytes = field(repr=False)
    digest: str
    blobs: Mapping[str, bytes] = field(repr=False, hash=False)

    @property
    def descriptor(self) -> dict[str, object]:
        """How a referrers list names this artifact."""
        return {"mediaType": OCI_MANIFEST, "size": len(self.manifest), "digest": self.digest,
                "artifactType": self.artifact_type}


def build_referrer(referrer: SampleReferrer) -> BuiltReferrer:
    """The artifact's manifest (OCI 1.1: artifactType, the empty config, one layer, the subject); pure."""
    subject = build_image(referrer.subject)
    blobs = {_digest(EMPTY_CONFIG): EMPTY_CONFIG, _digest(referrer.payload): referrer.payload}
    manifest = _canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": referrer.artifact_type,
        "config": {"mediaType": OCI_EMPTY, "size": len(EMPTY_CONFIG), "digest": _digest(EMPTY_CONFIG)},
        "layers": [{"mediaType": "application/octet-stream", "size": len(referrer.payload),
                    "digest": _digest(referrer.payload)}],
        "subject": {"mediaType": subject.media_type, "size": len(subject.manifest), "digest": subject.digest},
    })
    return BuiltReferrer(subject.repository, subject.digest, referrer.artifact_type, manifest, _digest(manifest),
                         blobs)


def referrers_tag(subject_digest: str) -> str:
    """The referrers tag schema's tag for a subject: `<alg>-<hex>`, the hex cut to 64 characters."""
    algorithm, _, hex_part = subject_digest.partition(":")
    return f"{algorithm}-{hex_part[:64]}"


def seed_referrers(
    base_url: str, auth: tuple[str, str] | None, referrers: Sequence[SampleReferrer], *, timeout: float = 30.0
) -> list[BuiltReferrer]:
    """Push each artifact and, per subject, the referrers tag schema index listing that subject's
    artifacts given here (and no others): seeding again changes nothing."""
    built = [build_referrer(referrer) for referrer in referrers]
    with requests.Session() as session:
        session.auth = RegistryAuth(*auth) if auth is not None else RegistryAuth(None, None)
        client = _RegistryClient(session, base_url.rstrip("/"), timeout)
        subjects: dict[tuple[str, str], list[BuiltReferrer]] = {}
        for artifact in built:
            for digest, content in artifact.blobs.items():
                if not client.blob_exists(artifact.subject_repository, digest):
                    client.upload_blob(artifact.subject_repository, digest, content)
            client.put_manifest(artifact.subject_repository, artifact.digest, OCI_MANIFEST, artifact.manifest,
                                artifact.digest)
            subjects.setdefault((artifact.subject_repository, artifact.subject_digest), []).append(artifact)
        for (repository, subject_digest), artifacts in subjects.items():
            index = _canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                     "manifests": [a.descriptor for a in artifacts]})
            client.put_manifest(repository, referrers_tag(subject_digest), OCI_INDEX, index, _digest(index))
    return built


# --- building -------------------------------------------------------------------------

# Stream granularity for generated layer content; big enough that hashing overhead is
# negligible, small enough that a 100 MiB layer never exists uncompressed in memory.
_STREAM_CHUNK = 1024 * 1024
# Docker's own default level; the content is incompressible anyway.
_GZIP_LEVEL = 6


def _build_platform(image: SampleImage, platform: str, blobs: dict[str, bytes]) -> BuiltManifest:
    manifest_type, _, config_type, layer_type = _OCI_TYPES if image.oci else _DOCKER_TYPES
    layers: list[tuple[str, int]] = []
    diff_ids: list[str] = []
    for index, size in enumerate(image.layer_sizes):
        seed = hashlib.sha256(f"{image.repository}\0{image.tag}\0{platform}\0{index}".encode()).digest()
        blob, diff_id = _build_layer(seed, size, f"sample-layer-{index}.bin")
        digest = _digest(blob)
        blobs[digest] = blob
        layers.append((digest, len(blob)))
        diff_ids.append(diff_id)

    config = _canonical_json(
        {
            **_platform_fields(platform),
            "created": CREATED,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"org.opencontainers.image.title": image.reference},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": CREATED, "created_by": f"registry_mirror sample layer {index} ({size} bytes)"}
                for index, size in enumerate(image.layer_sizes)
            ],
        }
    )
    config_digest = _digest(config)
    blobs[config_digest] = config

    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": layer_type, "size": size, "digest": digest} for digest, size in layers],
        }
    )
    return BuiltManifest(
        media_type=manifest_type,
        platform=platform,
        content=manifest,
        digest=_digest(manifest),
        config_digest=config_digest,
        layer_digests=tuple(digest for digest, _ in layers),
        diff_ids=tuple(diff_ids),
    )


def _build_layer(seed: bytes, size: int, name: str) -> tuple[bytes, str]:
    """Return (gzip'd tar holding one file of `size` seeded bytes, diff_id of the tar)."""
    compressed = io.BytesIO()
    # mtime=0 and an empty filename keep the gzip header free of anything run-dependent.
    # tarfile's own "w|gz" would stamp the current time into that header, hence the split.
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=_GZIP_LEVEL) as gz:
        tee = _HashingWriter(gz)
        # Stream mode ("w|") needs no seek/tell, so the uncompressed tar is never held whole.
        with tarfile.open(fileobj=tee, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size = size
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, _SeededReader(seed, size))
    return compressed.getvalue(), f"sha256:{tee.sha256.hexdigest()}"


class _SeededReader:
    """Read-only file of `size` bytes from a counter-mode SHAKE-256 stream keyed by `seed`.

    The bytes look random, so a layer compresses to about its nominal size, which keeps
    "a 100 MiB layer" meaning 100 MiB on the wire for benchmarks.
    """

    def __init__(self, seed: bytes, size: int) -> None:
        self._seed = seed
        self._remaining = size
        self._counter = 0
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._remaining:
            n = self._remaining
        parts: list[bytes] = []
        wanted = n
        while wanted:
            if not self._buffer:
                block = self._seed + self._counter.to_bytes(8, "big")
                self._buffer = hashlib.shake_256(block).digest(_STREAM_CHUNK)
                self._counter += 1
            part, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
            parts.append(part)
            wanted -= len(part)
        self._remaining -= n
        return b"".join(parts)


class _HashingWriter:
    """Pass writes through while hashing them, to get the tar's diff_id in the same pass."""

    def __init__(self, sink: BinaryIO | gzip.GzipFile) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._sink.write(data)


def _platform_fields(platform: str) -> dict[str, str]:
    os_name, architecture, *variant = platform.split("/")
    fields = {"architecture": architecture, "os": os_name}
    if variant:
        fields["variant"] = variant[0]
    return fields


def _canonical_json(value: object) -> bytes:
    # Sorted, compact keys make the bytes, and therefore the digest, independent of
    # dict construction order.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


# --- pushing --------------------------------------------------------------------------



def _seed_one(client: _RegistryClient, built: BuiltImage) -> SeededImage:
    repository = built.repository
    pushed = client.manifest_digest(repository, built.tag) != built.digest
    if pushed:
        for child in built.platform_manifests:
            for digest in (child.config_digest, *child.layer_digests):
                if not client.blob_exists(repository, digest):
                    client.upload_blob(repository, digest, built.blobs[digest])
            # A list's children must already be in the repository when the list is put.
            if len(built.platform_manifests) > 1 and client.manifest_digest(repository, child.digest) != child.digest:
                client.put_manifest(repository, child.digest, child.media_type, child.content, child.digest)
        client.put_manifest(repository, built.tag, built.media_type, built.manifest, built.digest)
    return SeededImage(
        repository=repository,
        tag=built.tag,
        digest=built.digest,
        media_type=built.media_type,
        platform_digests=built.platform_digests,
        total_bytes=built.total_bytes,
        pushed=pushed,
    )


class _RegistryClient:
    """The handful of Registry API v2 calls seeding needs, each with a timeout and a clear error."""

    def __init__(self, session: requests.Session, base_url: str, timeout: float) -> None:
        self._session = session
        self._base_url = base_url
        self._timeout = timeout

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """Digest the reference currently resolves to, or None if it does not exist."""
        response = self._call(
            "HEAD",
            f"{self._base_url}/v2/{repository}/manifests/{reference}",
            f"look up manifest {reference}",
            repository,
            (200, 404),
            headers={"Accept": MANIFEST_ACCEPT},
        )
        return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._call(
            "HEAD", f"{self._base_url}/v2/{repository}/blobs/{digest}", f"look up blob {digest}", repository, (200, 404)
        )
        return response.status_code == 200

    def upload_blob(self, repository: str, digest: str, content: bytes) -> None:
        action = f"upload blob {digest}"
        started = self._call("POST", f"{self._base_url}/v2/{repository}/blobs/uploads/", action, repository, (202,))
        location = started.headers.get("Location")
        if not location:
            raise SeedError(
                f"Registry {self._base_url} answered HTTP {started.status_code} without a Location "
                f"when asked to {action} in repository {repository}."
            )
        # `content` goes to the socket as-is: no second copy for a 100 MiB layer.
        finished = self._call(
            "PUT",
            _with_digest_query(urljoin(started.url, location), digest),
            action,
            repository,
            (201,),
            data=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._check_digest(finished, digest, action, repository)

    def put_manifest(self, repository: str, reference: str, media_type: str, content: bytes, digest: str) -> None:
        action = f"put manifest {reference}"
        response = self._call(
            "PUT",
            f"{self._base_url}/v2/{repository}/manifests/{reference}",
            action,
            repository,
            (201,),
            data=content,
            headers={"Content-Type": media_type},
        )
        self._check_digest(response, digest, action, repository)

    def _call(
        self,
        method: str,
        url: str,
        action: str,
        repository: str,
        ok_statuses: tuple[int, ...],
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        try:
            response = self._session.request(method, url, headers=headers, data=data, timeout=self._timeout)
        except requests.RequestException as exc:
            raise SeedError(
                f"Registry {self._base_url} could not be reached to {action} in repository {repository} "
                f"({exc.__class__.__name__})."
            ) from exc
        if response.status_code not in ok_statuses:
            raise SeedError(
                f"Registry {self._base_url} refused to {action} in repository {repository} "
                f"with HTTP {response.status_code}{_error_detail(response)}."
            )
        return response

    def _check_digest(self, response: requests.Response, expected: str, action: str, repository: str) -> None:
        # A registry that stored different bytes than we computed would break idempotency
        # silently on every later run; fail now instead.
        actual = response.headers.get("Docker-Content-Digest")
        if actual is not None and actual != expected:
            raise SeedError(
                f"Registry {self._base_url} stored digest {actual} instead of {expected} "
                f"when asked to {action} in repository {repository}."
            )


def _with_digest_query(upload_url: str, digest: str) -> str:
    """Add digest=... to an upload Location, which usually carries a _state query already."""
    separator = "&" if "?" in upload_url else "?"
    if upload_url.endswith(("?", "&")):
        separator = ""
    return f"{upload_url}{separator}digest={quote(digest, safe='')}"


def _error_detail(response: requests.Response) -> str:
    """' (CODE: message)' from a registry error body, or '' when there is none (e.g. HEAD)."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f" ({first.get('code', 'UNKNOWN')}: {first.get('message', '')})"
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
