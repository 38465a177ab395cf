"""Carry out a retention plan while every mirror instance serves, behind a gate that fails closed.

Why the order, and why a pull racing it cannot fail (the registry in proxy mode, 3.0.0 and 3.1.x):
- Manifests: the proxy's manifest store falls back to the upstream on *any* local error, so a
  manifest whose links or data vanish mid-request is a cache miss, never a failed pull.
- Blobs: the proxy's blob store asks storage whether it holds the blob (the repository's layer link,
  then the data's size) and, if so, serves it from storage with no fallback. So blob data is
  deleted only after (1) the tag, revision and layer links are gone, so new requests find nothing and
  fetch from the upstream, and (2) `grace_seconds` have passed, so requests that found the blob
  before the links went have finished reading it, and (3) a fresh listing shows no link to it in
  any repository, so a blob fetched again (or shared) meanwhile stays.
- That reasoning holds only if each request asks storage: the registry's in-memory blob
  descriptor cache (`storage.cache.blobdescriptor`) would answer "present" from memory long after the
  data went, and serve a 200 with no body behind it. The rendered config turns that cache off
  (registry_config.py); see docs/retention.md for its measured cost.
A dry run lists the same steps and touches nothing.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..analysis.cache_inventory import CacheLocation, base_prefix
from ..errors import RunbookError
from .plan import RetentionPlan, link_kind


class GateClosed(RunbookError):
    """Eviction was asked for without its confirmation."""


@dataclass(frozen=True)
class RetentionResult:
    dry_run: bool
    links_deleted: int
    blobs_deleted: int
    blobs_kept: int  # planned blobs a fresh listing showed linked again (fetched again, or shared since)
    seconds: float

    def summary(self) -> str:
        if self.dry_run:
            return (f"Dry run: would delete {self.links_deleted} link(s), wait out the grace period, then delete "
                    f"up to {self.blobs_deleted} blob(s) no link points at; nothing was changed.")
        return (f"Deleted {self.links_deleted} link(s) and {self.blobs_deleted} blob(s) in {self.seconds:.1f} s; "
                f"{self.blobs_kept} planned blob(s) were linked again meanwhile and stay.")


def apply_retention(plan: RetentionPlan, cache: CacheLocation, *, dry_run: bool = True, confirm: bool = False,
                    sleep: Callable[[float], None] = time.sleep, workers: int = 16) -> RetentionResult:
    """Delete the plan's links, wait `grace_seconds`, then delete the blob data nothing links to.
    `dry_run` (the default) changes nothing; otherwise `confirm` must be True."""
    links, blobs = plan.link_keys(), plan.blob_keys()
    if dry_run:
        return RetentionResult(True, len(links), len(blobs), 0, 0.0)
    if not confirm:
        raise GateClosed("Eviction needs confirm_eviction=True as well as dry_run=False; nothing was deleted.")
    if cache.delete is None:
        raise RunbookError(f"no S3 client to delete from bucket {cache.bucket!r} with")
    started = time.monotonic()
    for group in ("tags", "revisions", "layers", "uploads"):  # in this order: each step leaves the store consistent
        _delete(cache, [k for k in links if link_kind(k) == group], workers)
    sleep(plan.policy.grace_seconds)
    linked = linked_digests(cache)
    doomed = [k for k in blobs if _digest(k) not in linked]
    _delete(cache, doomed, workers)
    return RetentionResult(False, len(links), len(doomed), len(blobs) - len(doomed), time.monotonic() - started)


def linked_digests(cache: CacheLocation) -> set[str]:
    """Every digest some repository links to now (revision and layer links), from a fresh listing."""
    prefix = f"{base_prefix(cache.root)}repositories/"
    found: set[str] = set()
    for item in cache.listing(prefix):
        key = item["Key"]
        if key.endswith("/link") and ("/_layers/sha256/" in key or "/_manifests/revisions/sha256/" in key):
            found.add("sha256:" + key.rsplit("/", 2)[-2])
    return found


def _delete(cache: CacheLocation, keys: list[str], workers: int) -> None:
    assert cache.delete is not None
    chunks = [keys[i:i + 1000] for i in range(0, len(keys), 1000)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(cache.delete, chunks))


def _digest(blob_key: str) -> str:
    return "sha256:" + blob_key.rsplit("/", 2)[-2]
