"""What to evict and what that frees: the policy applied to the layout and the ledger.

Order of eviction: what no image references (always: nothing can serve it), then images nobody
pulled for `evict_after_days`, then, while the bucket is over its budget, the least recently pulled
image first. Pinned images and images pulled within `protect_days` are never evicted. An image's
last pull is the latest of the ledger's pulls of its tag and of its manifests by digest, and of the
last time the mirror wrote its tag link (it does on every tag fetch from upstream), so an image with
no ledger entry is not taken for never pulled. Bytes freed are counted as eviction proceeds: a blob
another remaining image references is not freed, and not counted, until that image goes too.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd

from ..readable import human_bytes, money, price
from .layout import Image, Layout
from .policy import RetentionPolicy

PLAN_COLUMNS = ["image", "tag", "last_pull", "reason", "objects", "bytes_freed"]


@dataclass(frozen=True)
class Eviction:
    image: str  # repository, or "(unreferenced)"
    tag: str  # tag, @digest, or ""
    last_pull: pd.Timestamp | None
    reason: str
    keys: tuple[str, ...]  # links first (tag, revision, layer), then blob data
    bytes_freed: int


@dataclass(frozen=True)
class RetentionPlan:
    evictions: list[Eviction]
    kept: pd.DataFrame  # image, tag, last_pull, why kept (pinned, protected, within budget)
    total_bytes: int  # the bucket's registry layout now
    policy: RetentionPolicy

    @property
    def freed_bytes(self) -> int:
        return sum(e.bytes_freed for e in self.evictions)

    @property
    def after_bytes(self) -> int:
        return self.total_bytes - self.freed_bytes

    def table(self) -> pd.DataFrame:
        """One row per eviction and a total row."""
        rows = [{"image": e.image, "tag": e.tag, "last_pull": e.last_pull, "reason": e.reason,
                 "objects": len(e.keys), "bytes_freed": e.bytes_freed} for e in self.evictions]
        rows.append({"image": "total", "tag": "", "last_pull": None, "reason": "",
                     "objects": sum(len(e.keys) for e in self.evictions), "bytes_freed": self.freed_bytes})
        return pd.DataFrame(rows, columns=PLAN_COLUMNS)

    def link_keys(self) -> list[str]:
        """Tag links, then revision links, then layer links: the order deletion must take."""
        order = {"tags": 0, "revisions": 1, "layers": 2, "uploads": 3}
        keys = [k for e in self.evictions for k in e.keys if link_kind(k) != "blob"]
        return sorted(keys, key=lambda k: (order[link_kind(k)], k))

    def blob_keys(self) -> list[str]:
        return sorted(k for e in self.evictions for k in e.keys if link_kind(k) == "blob")

    def verdict(self) -> str:
        images = sum(1 for e in self.evictions if e.image != "(unreferenced)")
        rate, currency = self.policy.price_per_gb_month, self.policy.currency
        cost = (f", {money(self.freed_bytes / 1e9 * rate, currency)} a month at {price(rate, currency, 'GB-month')}"
                if rate else "")
        budget = self.policy.budget_bytes
        if budget:
            under = "under" if self.after_bytes <= budget else "still over"
            held = "" if self.after_bytes <= budget else (
                " (the rest is pinned, pulled within the protection window, or shared with them)")
            ending = f"; the bucket goes from {_mb(self.total_bytes)} to {_mb(self.after_bytes)}, {under} the " \
                     f"{_mb(budget)} budget{held}"
        else:
            ending = f"; the bucket goes from {_mb(self.total_bytes)} to {_mb(self.after_bytes)} (no size budget)"
        # Worded as the plan it is: the same line heads a dry run, and an eviction reports what it did apart.
        return (f"Plan: evicting {images} image(s) and what nothing references frees {_mb(self.freed_bytes)} in "
                f"{sum(len(e.keys) for e in self.evictions)} object(s){cost}{ending}.")


def plan_retention(layout: Layout, ledger: pd.DataFrame, policy: RetentionPolicy, *,
                   now: datetime | None = None, other_bytes: int = 0) -> RetentionPlan:
    """`other_bytes`: what else the bucket holds (the ledger, the scheduler's state), counted against
    the budget and never evicted."""
    now = now or datetime.now(timezone.utc)
    grace = timedelta(seconds=policy.grace_seconds)
    last = _last_pulls(layout.images, ledger)
    # Reference counts: within a repository for its links, across the bucket for blob data.
    links: Counter[tuple[str, str]] = Counter()
    data: Counter[str] = Counter()
    for image in layout.images:
        for digest in image.manifests | image.blobs:
            links[(image.repository, digest)] += 1
            data[digest] += 1

    evictions: list[Eviction] = []
    # Not a fetch in progress (younger than the grace period), and not a stray link of a pinned
    # repository (nor the blob it points at): pinned means untouched.
    # An upload may be a large fetch still running: only one idle for an hour is a leftover.
    stray = [k for k in layout.unreferenced()
             if now - layout.modified[k] > (max(grace, timedelta(hours=1)) if link_kind(k) == "uploads" else grace)]
    held = {k for k in stray if link_kind(k) != "blob" and policy.is_pinned(_repository(k), "")}
    held_digests = {"sha256:" + k.rsplit("/", 2)[-2] for k in held}
    stray = [k for k in stray if k not in held and not (link_kind(k) == "blob" and
                                                        "sha256:" + k.rsplit("/", 2)[-2] in held_digests)]
    if stray:
        evictions.append(Eviction("(unreferenced)", "", None, "nothing references it", tuple(stray),
                                  sum(layout.sizes[k] for k in stray)))
    freed_total = sum(e.bytes_freed for e in evictions)

    def evict(image: Image, reason: str) -> None:
        nonlocal freed_total
        keys = list(image.tag_keys)
        for digest in sorted(image.manifests | image.blobs):
            links[(image.repository, digest)] -= 1
            if links[(image.repository, digest)] == 0:
                table = layout.revision_keys if digest in image.manifests else layout.layer_keys
                key = table.get((image.repository, digest)) or layout.layer_keys.get((image.repository, digest))
                if key:
                    keys.append(key)
            data[digest] -= 1
            if data[digest] == 0 and digest in layout.blob_keys:
                keys.append(layout.blob_keys[digest])
        freed = sum(layout.sizes.get(k, 0) for k in keys)
        freed_total += freed
        evictions.append(Eviction(image.repository, image.tag or f"@{image.digest}", last[image.name], reason,
                                  tuple(keys), freed))

    kept_rows = []
    candidates = []
    for image in layout.images:
        pulled = last[image.name]
        if policy.is_pinned(image.repository, image.tag):
            kept_rows.append((image, "pinned"))
        elif pulled is not None and now - pulled < timedelta(days=policy.protect_days):
            kept_rows.append((image, "pulled within the protection window"))
        else:
            candidates.append(image)
    oldest_first = sorted(candidates, key=lambda i: (_sortable(last[i.name]), i.name))
    remaining = []
    for image in oldest_first:
        pulled = last[image.name]
        if policy.evict_after_days and (pulled is None or now - pulled > timedelta(days=policy.evict_after_days)):
            evict(image, f"not pulled for {policy.evict_after_days} days")
        else:
            remaining.append(image)
    budget = policy.budget_bytes
    for image in remaining:
        if budget and layout.total_bytes + other_bytes - freed_total > budget:
            evict(image, "over budget, least recently pulled")
        else:
            kept_rows.append((image, "within budget"))
    kept = pd.DataFrame([{"image": i.repository, "tag": i.tag or f"@{i.digest}", "last_pull": last[i.name],
                          "kept": why} for i, why in kept_rows], columns=["image", "tag", "last_pull", "kept"])
    return RetentionPlan(evictions, kept, layout.total_bytes + other_bytes, policy)


def _last_pulls(images: list[Image], ledger: pd.DataFrame) -> dict[str, pd.Timestamp | None]:
    pulls = {(r, ref): t for r, ref, t in zip(ledger["repository"], ledger["reference"],
                                              pd.to_datetime(ledger["last_pull"], utc=True))}
    out: dict[str, pd.Timestamp | None] = {}
    for image in images:
        seen = [pulls.get((image.repository, image.tag))] if image.tag else []
        seen += [pulls.get((image.repository, d)) for d in image.manifests]
        seen.append(image.tag_modified)
        known = [pd.Timestamp(t) for t in seen if t is not None and not pd.isna(t)]
        out[image.name] = max(known) if known else None
    return out


def _sortable(when: pd.Timestamp | None) -> pd.Timestamp:
    return when if when is not None else pd.Timestamp.min.tz_localize("UTC")


def link_kind(key: str) -> str:
    """tags, revisions, layers, uploads, or blob: which step of the deletion a key belongs to."""
    if "/_uploads/" in key:
        return "uploads"
    if "/_manifests/tags/" in key:
        return "tags"
    if "/_manifests/revisions/" in key:
        return "revisions"
    if "/_layers/" in key:
        return "layers"
    return "blob"


def _repository(link_key: str) -> str:
    after = link_key.split("/repositories/", 1)[1]
    return after.split("/_manifests/", 1)[0].split("/_layers/", 1)[0].split("/_uploads/", 1)[0]


def _mb(n: int) -> str:
    return human_bytes(n)
