"""Retention's plan, gate and ledger on an in-memory bucket laid out as the registry lays it out."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from registry_mirror.analysis.cache_inventory import CacheLocation, inventory
from registry_mirror.errors import ParameterError
from registry_mirror.retention.apply import GateClosed, apply_retention
from registry_mirror.retention.layout import read_layout
from registry_mirror.retention.ledger import pulls_from_logs, read_ledger, update_ledger
from registry_mirror.retention.plan import plan_retention
from registry_mirror.retention.policy import RetentionPolicy, retention_policy

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
BASE = "docker/registry/v2/"


class Bucket:
    """A dict of key -> (bytes, last modified) behind CacheLocation's callables."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, datetime]] = {}

    def put(self, key: str, data: bytes, when: datetime = NOW - timedelta(days=30)) -> None:
        self.objects[key] = (data, when)

    def location(self) -> CacheLocation:
        def listing(prefix: str):  # type: ignore[no-untyped-def]
            return [{"Key": k, "Size": len(v), "LastModified": t.isoformat()}
                    for k, (v, t) in sorted(self.objects.items()) if k.startswith(prefix)]

        def delete(keys: list[str]) -> None:
            for key in keys:
                self.objects.pop(key, None)
        return CacheLocation(listing, lambda k: self.objects[k][0], "bucket", "/",
                             write=lambda k, d: self.put(k, d, NOW), delete=delete)


def _blob(bucket: Bucket, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    bucket.put(f"{BASE}blobs/sha256/{digest[7:9]}/{digest[7:]}/data", data)
    return digest


def _image(bucket: Bucket, repository: str, tag: str, layers: list[bytes], *, pulled: datetime | None = None) -> str:
    """A pulled image as the proxy stores it: blobs, layer links, the manifest, its revision and tag links."""
    config = _blob(bucket, json.dumps({"repo": repository, "tag": tag}).encode())
    digests = [_blob(bucket, layer) for layer in layers]
    for digest in [config, *digests]:
        bucket.put(f"{BASE}repositories/{repository}/_layers/sha256/{digest[7:]}/link", digest.encode())
    manifest = _blob(bucket, json.dumps({"schemaVersion": 2, "config": {"digest": config},
                                         "layers": [{"digest": d} for d in digests]}).encode())
    bucket.put(f"{BASE}repositories/{repository}/_manifests/revisions/sha256/{manifest[7:]}/link", manifest.encode())
    bucket.put(f"{BASE}repositories/{repository}/_manifests/tags/{tag}/current/link", manifest.encode(),
               pulled or NOW - timedelta(days=30))
    return manifest


def _plan(bucket: Bucket, policy: RetentionPolicy, ledger: pd.DataFrame | None = None):  # type: ignore[no-untyped-def]
    cache = bucket.location()
    layout = read_layout(inventory(cache.listing, progress=False), cache.read)
    ledger = ledger if ledger is not None else pd.DataFrame(columns=["repository", "reference", "last_pull"])
    return plan_retention(layout, ledger, policy, now=NOW)


SHARED = b"S" * 1000


def _filled() -> Bucket:
    bucket = Bucket()
    _image(bucket, "library/old", "1", [SHARED, b"o" * 50_000], pulled=NOW - timedelta(days=20))
    _image(bucket, "library/mid", "1", [b"m" * 40_000], pulled=NOW - timedelta(days=10))
    _image(bucket, "library/new", "1", [SHARED, b"n" * 30_000], pulled=NOW - timedelta(hours=2))
    _image(bucket, "library/pin", "1", [b"p" * 60_000], pulled=NOW - timedelta(days=90))
    return bucket


def test_budget_evicts_least_recently_pulled_first_and_keeps_shared_blobs() -> None:
    bucket = _filled()
    total = sum(len(v) for v, _ in bucket.objects.values())
    plan = _plan(bucket, RetentionPolicy(budget=f"{(total - 60_000) / 1e3:.3f}K", pinned=["library/pin"],
                                         protect_days=1.0))
    assert [(e.image, e.reason) for e in plan.evictions] == [
        ("library/old", "over budget, least recently pulled"), ("library/mid", "over budget, least recently pulled")]
    assert plan.after_bytes <= plan.policy.budget_bytes
    shared = hashlib.sha256(SHARED).hexdigest()
    assert not any(shared in k for e in plan.evictions for k in e.keys if "/blobs/" in k)
    # The shared layer's link in library/old goes with it: links are per repository.
    assert any(shared in k and "library/old/_layers" in k for k in plan.evictions[0].keys)
    table = plan.table()
    assert table.iloc[-1]["image"] == "total" and table.iloc[-1]["bytes_freed"] == plan.freed_bytes
    assert "under the" in plan.verdict()


def test_age_limit_protection_and_pins() -> None:
    ledger = pd.DataFrame([{"repository": "library/mid", "reference": "1", "last_pull": NOW - timedelta(hours=1)}])
    plan = _plan(_filled(), RetentionPolicy(evict_after_days=7, protect_days=1.0, pinned=["library/p*"],
                                            price_per_gb_month=23.0, currency="EUR"),
                 ledger)
    # mid's tag link is 10 days old but the ledger saw a pull an hour ago: protected.
    assert [e.image for e in plan.evictions] == ["library/old"]
    kept = plan.kept.set_index("image")["kept"]
    assert kept["library/pin"] == "pinned" and kept["library/mid"] == "pulled within the protection window"
    # A cost carries its currency: the policy's ISO code on the amount and on the price.
    assert re.search(r"[0-9]\.[0-9]{2} EUR a month at 23 EUR per GB-month", plan.verdict()), plan.verdict()
    assert "USD" in _plan(_filled(), RetentionPolicy(evict_after_days=7, price_per_gb_month=0.039), ledger).verdict()


def test_unreferenced_blobs_and_stray_links_go_first() -> None:
    bucket = _filled()
    stray = _blob(bucket, b"x" * 5000)
    bucket.put(f"{BASE}repositories/library/gone/_layers/sha256/{stray[7:]}/link", stray.encode())
    plan = _plan(bucket, RetentionPolicy())
    assert plan.evictions[0].image == "(unreferenced)" and len(plan.evictions) == 1
    assert len(plan.evictions[0].keys) == 2 and plan.evictions[0].bytes_freed >= 5000


def test_index_children_are_evicted_with_the_index() -> None:
    bucket = Bucket()
    child = _image(bucket, "library/multi", "amd64-only", [b"c" * 10_000])
    del bucket.objects[f"{BASE}repositories/library/multi/_manifests/tags/amd64-only/current/link"]
    index = _blob(bucket, json.dumps({"manifests": [{"digest": child}, {"digest": "sha256:" + "0" * 64}]}).encode())
    bucket.put(f"{BASE}repositories/library/multi/_manifests/revisions/sha256/{index[7:]}/link", index.encode())
    bucket.put(f"{BASE}repositories/library/multi/_manifests/tags/latest/current/link", index.encode())
    plan = _plan(bucket, RetentionPolicy(evict_after_days=1))
    assert [(e.image, e.tag) for e in plan.evictions] == [("library/multi", "latest")]
    keys = plan.evictions[0].keys
    assert sum("/blobs/" in k for k in keys) == 4  # index, child, config, layer
    assert plan.after_bytes == 0


def test_apply_orders_links_before_blobs_and_the_gate_fails_closed() -> None:
    bucket = _filled()
    plan = _plan(bucket, RetentionPolicy(evict_after_days=15, grace_seconds=7))
    before = dict(bucket.objects)
    assert apply_retention(plan, bucket.location()).dry_run
    with pytest.raises(GateClosed):
        apply_retention(plan, bucket.location(), dry_run=False)
    assert bucket.objects == before
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        # During the grace period a client pulls the evicted image again: its layer is linked anew.
        waited.append(seconds)
        layer = "sha256:" + hashlib.sha256(b"o" * 50_000).hexdigest()
        bucket.put(f"{BASE}repositories/library/old/_layers/sha256/{layer[7:]}/link", layer.encode(), NOW)
    result = apply_retention(plan, bucket.location(), dry_run=False, confirm=True, sleep=sleep)
    assert waited == [7] and result.blobs_kept == 1
    assert not any("library/old/_manifests" in k for k in bucket.objects)
    assert any(hashlib.sha256(b"o" * 50_000).hexdigest() in k and k.endswith("/data") for k in bucket.objects)


def test_policy_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ParameterError, match="budgett"):
        retention_policy({"budgett": "1G"}, source="retention.ipynb parameters")
    with pytest.raises(ParameterError, match="budget"):
        retention_policy({"budget": "lots"}, source="retention.ipynb parameters")
    with pytest.raises(ParameterError, match="outside docker/"):
        retention_policy({"ledger_prefix": "docker/ledger/"}, source="retention.ipynb parameters")
    with pytest.raises(ParameterError, match="currency"):
        retention_policy({"currency": "dollars"}, source="retention.ipynb parameters")
    assert RetentionPolicy(budget="1.5G").budget_bytes == 1_500_000_000


def test_ledger_appends_across_runs_and_keeps_the_latest_pull(tmp_path: Path) -> None:
    log = tmp_path / "proxy.access.log"
    line = ('NginxLog "-" "GET /v2/library/a/manifests/{ref} HTTP/1.1" 200 {size} client=127.0.0.1 rt=0.001 '
            'urt=0.001 ua="unix:m1" cache=MISS t={t}\n')
    log.write_text(line.format(ref="1", size=10, t="2026-12-01T10:00:00+00:00")
                   + line.format(ref="1", size=10, t="2026-12-02T10:00:00+00:00")
                   + line.format(ref="sha256:" + "a" * 64, size=10, t="2026-12-03T10:00:00+00:00"))
    read = pulls_from_logs([log])
    assert len(read) == 2 and read.set_index("reference").loc["1", "last_pull"] == pd.Timestamp("2026-12-02T10:00Z")
    bucket = Bucket()
    cache = bucket.location()
    assert update_ledger(cache, "retention/ledger/", [log], dry_run=True).written == ""
    update_ledger(cache, "retention/ledger/", [log])
    log.write_text(line.format(ref="1", size=10, t="2026-12-05T10:00:00+00:00"))
    update = update_ledger(cache, "retention/ledger/", [log])
    assert update.parts == 2 and all(not k.startswith("docker/") for k in bucket.objects)
    ledger = read_ledger(cache, "retention/ledger/").set_index("reference")
    assert ledger.loc["1", "last_pull"] == pd.Timestamp("2026-12-05T10:00Z") and len(ledger) == 2


def test_cache_ttl_zero_needs_a_registry_that_survives_its_own_stop() -> None:
    """Measured: registry 3.0.0 with `proxy.ttl: 0` exits 2 on SIGTERM (nil scheduler in Close)."""
    import yaml

    from registry_mirror.parameters import PROJECT_ROOT, validate_settings

    data = yaml.safe_load((PROJECT_ROOT / "params" / "local.yaml").read_text())
    data["registry"] = {**data["registry"], "version": "3.0.0", "cache_ttl": "0"}
    with pytest.raises(ParameterError, match="'registry.cache_ttl' 0 needs registry 3.1 or later"):
        validate_settings(data, source="params/local.yaml")
    data["registry"]["version"] = "3.1.2"
    assert validate_settings(data, source="params/local.yaml").registry.cache_ttl == "0"


def test_upload_leftovers_go_once_idle_for_an_hour() -> None:
    bucket = _filled()
    bucket.put(f"{BASE}repositories/library/new/_uploads/abc/startedat", b"2026", NOW - timedelta(hours=2))
    bucket.put(f"{BASE}repositories/library/new/_uploads/def/startedat", b"2026", NOW - timedelta(minutes=5))
    plan = _plan(bucket, RetentionPolicy())
    assert plan.evictions[0].keys == (f"{BASE}repositories/library/new/_uploads/abc/startedat",)


def test_cache_usage_sets_what_the_scheduler_holds_beside_what_retention_manages() -> None:
    import json

    from registry_mirror.analysis.cache_inventory import inventory
    from registry_mirror.retention.coverage import eviction_coverage
    from tests.unit.test_cache_inventory import STATE, layout, listing_of

    inv = inventory(listing_of(layout()), "", read=lambda key: json.dumps(STATE).encode(), progress=False)
    ledger = pd.DataFrame({"repository": ["library/a"], "reference": ["latest"],
                           "last_pull": [pd.Timestamp("2026-11-01", tz="UTC")]})
    table = eviction_coverage(inv, ledger).set_index("mechanism")
    # library/a's layers 1 and 2 have scheduler entries; library/b's 2 and 3 have none (issue 4594's shape).
    assert table.loc["proxy scheduler (cache_ttl)", ["objects", "bytes"]].tolist() == [2, 6000]
    assert table.loc["nothing (no scheduler entry)", ["objects", "bytes"]].tolist() == [2, 5700]
    assert table.loc["retention (ledger)", ["objects", "bytes"]].tolist() == [1, 6000]
    assert table.loc["retention (no pull recorded)", ["objects", "bytes"]].tolist() == [1, 5700]
    assert table.loc["retention (ledger)", "size"] == "6.0 kB"
    empty = eviction_coverage(inv, pd.DataFrame(columns=["repository", "reference", "last_pull"]))
    assert empty.set_index("mechanism").loc["retention (ledger)", "objects"] == 0
