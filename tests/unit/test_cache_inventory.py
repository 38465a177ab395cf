"""cache_inventory on a generated registry layout: sizes, dedupe, unreferenced blobs, uploads."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from registry_mirror.analysis.cache_inventory import inventory

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
BASE = "docker/registry/v2/"


def d(n: int) -> str:
    return f"{n:064x}"


def layout() -> list[dict]:
    objects = []

    def put(key: str, size: int, age_days: int = 1) -> None:
        objects.append({"Key": BASE + key, "Size": size, "LastModified": NOW - timedelta(days=age_days)})

    for n, size, age in ((1, 1000, 1), (2, 5000, 40), (3, 700, 400), (9, 123, 2)):  # 9 is linked by nobody
        put(f"blobs/sha256/{d(n)[:2]}/{d(n)}/data", size, age)
    # Two repositories share layer 2: stored once, counted in both.
    for repo, layers in (("library/a", (1, 2)), ("library/b", (2, 3))):
        for n in layers:
            put(f"repositories/{repo}/_layers/sha256/{d(n)}/link", 71)
        put(f"repositories/{repo}/_manifests/tags/latest/current/link", 71)
        put(f"repositories/{repo}/_manifests/tags/latest/index/sha256/{d(layers[0])}/link", 71)
    put("repositories/library/b/_uploads/0b1c/data", 4096)
    put("repositories/library/b/_uploads/0b1c/startedat", 20)
    return objects


def listing_of(objects: list[dict]):  # type: ignore[no-untyped-def]
    def listing(prefix: str):  # type: ignore[no-untyped-def]
        return [o for o in objects if o["Key"].startswith(prefix)]
    return listing


def test_sizes_dedupe_unreferenced_and_uploads() -> None:
    state = {"library/a": {"Key": "library/a", "Expiry": "2026-11-08T00:00:00Z", "EntryType": 0}}
    inv = inventory(listing_of(layout()), "", read=lambda key: json.dumps(state).encode(), progress=False)
    s = inv.summary().iloc[0]
    assert s["blobs"] == 4 and s["physical_blob_bytes"] == 6823
    assert s["logical_bytes"] == 1000 + 5000 + 5000 + 700  # layer 2 counted once per repository
    assert round(s["dedupe_ratio"], 3) == round(11700 / 6823, 3)
    assert s["unreferenced_blobs"] == 1 and s["reclaimable_bytes"] == 123
    assert s["upload_objects"] == 2 and s["upload_bytes"] == 4116
    assert s["repositories"] == 2 and s["scheduler_entries"] == 1
    repos = inv.repositories().set_index("repository")
    assert repos.loc["library/b", "logical_bytes"] == 5700 and repos.loc["library/a", "tags"] == 1
    ages = inv.ages(now=NOW).set_index("age")
    assert ages.loc["<1 week", "blobs"] == 2 and ages.loc["<3 months", "bytes"] == 5000 and ages.loc["older", "blobs"] == 1
    assert "1 unreferenced blob(s)" in inv.verdict(quota_gb=1, price_per_gb_month=0.03)


def test_a_root_directory_and_an_empty_bucket() -> None:
    inv = inventory(lambda prefix: [], "/mirror", progress=False)
    assert inv.summary().iloc[0]["objects"] == 0
    assert "0 repositories" in inv.verdict()
