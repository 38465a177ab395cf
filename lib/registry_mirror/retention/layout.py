"""What the bucket holds as images: tag -> manifest (an index -> its child manifests) -> blobs.

Built from the cache inventory (the listing, classified) plus two kinds of small reads, in parallel:
each tag's `current/link` (the digest the tag points at) and each stored manifest's data (which
blobs and child manifests it references). An image is a repository and tag; a manifest stored in a
repository that no tag reaches (pulled by digest, or a tag's earlier target) is an image of its own,
named by digest. Each image owns the keys it would free if it were the last one to reference them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from ..analysis.cache_inventory import Inventory

LINK_KINDS = ("tag_link", "tag_index_link", "revision_link", "layer_link")


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str  # "" for a manifest no tag reaches
    digest: str  # the manifest the tag points at (or the untagged manifest)
    tag_keys: tuple[str, ...]  # the tag's own link objects (current and index links)
    manifests: frozenset[str]  # the manifest and, for an index, its children stored here
    blobs: frozenset[str]  # configs and layers those manifests reference
    tag_modified: pd.Timestamp | None = None  # when the tag link was last written (the mirror fetched it)

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Layout:
    images: list[Image]
    sizes: dict[str, int]  # key -> bytes, for every object in the bucket's registry layout
    revision_keys: dict[tuple[str, str], str]  # (repository, digest) -> its revision link
    layer_keys: dict[tuple[str, str], str]  # (repository, digest) -> its layer link
    blob_keys: dict[str, str]  # digest -> its data
    modified: dict[str, pd.Timestamp] = field(repr=False)  # key -> last write
    total_bytes: int = 0  # every object under the storage root the inventory saw
    uploads: tuple[str, ...] = ()  # leftover upload state: a pull-through cache finishes or abandons uploads

    def unreferenced(self) -> list[str]:
        """Links and blob data no image reaches: stray layer links (a blob fetched again after an
        eviction, or by digest alone) and the blobs only they or nothing point at; and upload
        leftovers (a fetch whose client hung up before the blob was stored)."""
        reached_links = {self.revision_keys.get((i.repository, d)) for i in self.images for d in i.manifests}
        reached_links |= {self.layer_keys.get((i.repository, d)) for i in self.images for d in i.blobs}
        reached_blobs = {d for i in self.images for d in (*i.manifests, *i.blobs)}
        links = [k for k in (*self.revision_keys.values(), *self.layer_keys.values()) if k not in reached_links]
        blobs = [k for d, k in self.blob_keys.items() if d not in reached_blobs]
        return [*self.uploads, *links, *blobs]


def read_layout(inventory: Inventory, read: Callable[[str], bytes], *, workers: int = 32) -> Layout:
    """The images in the inventory, with what each references (tag links and manifests are read)."""
    objects = inventory.objects
    sizes = dict(zip(objects["key"], objects["size"].astype("int64")))
    modified = dict(zip(objects["key"], objects["last_modified"]))
    revisions = objects[objects["kind"] == "revision_link"]
    layers = objects[objects["kind"] == "layer_link"]
    blobs = objects[objects["kind"] == "blob"]
    revision_keys = {(r, d): k for r, d, k in zip(revisions["repository"], revisions["digest"], revisions["key"])}
    layer_keys = {(r, d): k for r, d, k in zip(layers["repository"], layers["digest"], layers["key"])}
    blob_keys = dict(zip(blobs["digest"], blobs["key"]))

    tags = objects[objects["kind"] == "tag_link"]
    index_links = objects[objects["kind"] == "tag_index_link"]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        targets = list(pool.map(lambda key: _link_target(read, key), tags["key"]))
        stored = sorted({d for _, d in revision_keys} & set(blob_keys))
        manifests = dict(zip(stored, pool.map(lambda d: _references(read, blob_keys[d]), stored)))

    # A tag's index links, by the tag's folder (…/_manifests/tags/<tag>/), found once.
    by_folder: dict[str, list[str]] = {}
    for key in index_links["key"]:
        by_folder.setdefault(key[: key.index("/index/sha256/") + 1], []).append(key)
    images: list[Image] = []
    reached: set[tuple[str, str]] = set()
    for repository, tag, key, target, when in zip(tags["repository"], tags["tag"], tags["key"], targets,
                                                  tags["last_modified"]):
        if not target:
            continue  # an empty or unreadable link: the registry cannot serve it either
        folder = key[: -len("current/link")]
        own = tuple(sorted([key, *by_folder.get(folder, [])]))
        image = _image(repository, tag, target, own, manifests, revision_keys, when)
        reached |= {(repository, d) for d in image.manifests}
        images.append(image)
    for repository, digest in sorted(revision_keys):
        if (repository, digest) not in reached:
            image = _image(repository, "", digest, (), manifests, revision_keys, None)
            reached |= {(repository, d) for d in image.manifests}
            images.append(image)
    total = int(objects["size"].sum())
    uploads = tuple(objects[objects["kind"] == "upload"]["key"])
    return Layout(images, sizes, revision_keys, layer_keys, blob_keys, modified, total, uploads)


def _image(repository: str, tag: str, digest: str, tag_keys: tuple[str, ...], manifests: dict[str, list[str]],
           revision_keys: dict[tuple[str, str], str], when: pd.Timestamp | None) -> Image:
    """The manifests reachable from `digest` in this repository (an index's children that are stored
    here), and every blob they reference."""
    seen: set[str] = set()
    blobs: set[str] = set()
    pending = [digest]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for ref in manifests.get(current, []):
            if (repository, ref) in revision_keys:
                pending.append(ref)  # a child manifest this repository holds
            else:
                blobs.add(ref)
    manifests_here = frozenset(d for d in seen if (repository, d) in revision_keys or d == digest)
    return Image(repository, tag, digest, tag_keys, manifests_here, frozenset(blobs - manifests_here), when)


def _link_target(read: Callable[[str], bytes], key: str) -> str:
    try:
        text = read(key).decode().strip()
    except Exception:  # noqa: BLE001 - deleted since the listing (an eviction or the registry's own expiry)
        return ""
    return text if text.startswith("sha256:") else ""


def _references(read: Callable[[str], bytes], key: str) -> list[str]:
    """Digests a manifest references: an index's manifests, an image manifest's config and layers."""
    try:
        document = json.loads(read(key))
    except Exception:  # noqa: BLE001 - gone since the listing, or not JSON (not a manifest): references nothing
        return []
    if not isinstance(document, dict):
        return []
    refs = [m.get("digest") for m in document.get("manifests") or [] if isinstance(m, dict)]
    config = document.get("config")
    if isinstance(config, dict):
        refs.append(config.get("digest"))
    refs += [layer.get("digest") for layer in document.get("layers") or [] if isinstance(layer, dict)]
    return [r for r in refs if isinstance(r, str) and r.startswith("sha256:")]
