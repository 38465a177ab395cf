"""cache_inventory on a generated registry layout: sizes, dedupe, unreferenced blobs, uploads."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from registry_mirror.analysis.cache_inventory import inventory, inventory_from_report

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


def folders_of(objects: list[dict]):  # type: ignore[no-untyped-def]
    """A delimiter listing over the same objects: what sits right at a prefix, and its sub-prefixes."""
    def folders(prefix: str):  # type: ignore[no-untyped-def]
        here, subs = [], set()
        for o in objects:
            if o["Key"].startswith(prefix):
                rest = o["Key"][len(prefix):]
                if "/" in rest:
                    subs.add(prefix + rest.split("/")[0] + "/")
                else:
                    here.append(o)
        return here, sorted(subs)
    return folders


# The registry's own shape (registry/proxy/scheduler/scheduler.go): Key, ExpiryData, EntryType.
STATE = {f"library/a@sha256:{d(n)}": {"Key": f"library/a@sha256:{d(n)}", "ExpiryData": "2026-11-08T00:00:00Z",
                                      "EntryType": 0} for n in (1, 2)}


@pytest.mark.parametrize("walk", [False, True], ids=["one-listing", "per-repository"])
def test_sizes_dedupe_unreferenced_and_uploads(walk: bool) -> None:
    objects = layout()
    inv = inventory(listing_of(objects), "", read=lambda key: json.dumps(STATE).encode(), progress=False,
                    folders=folders_of(objects) if walk else None)
    assert len(inv.objects) == len(objects)
    s = inv.summary().iloc[0]
    assert s["blobs"] == 4 and s["physical_blob_bytes"] == 6823
    assert s["logical_bytes"] == 1000 + 5000 + 5000 + 700  # layer 2 counted once per repository
    assert round(s["dedupe_ratio"], 3) == round(11700 / 6823, 3)
    assert s["unreferenced_blobs"] == 1 and s["reclaimable_bytes"] == 123
    assert s["upload_objects"] == 2 and s["upload_bytes"] == 4116
    assert s["repositories"] == 2 and s["scheduler_entries"] == 2
    assert inv.scheduler["expiry"].tolist() == ["2026-11-08T00:00:00Z"] * 2
    # library/b's layers have no scheduler entry: never expired, the sign of distribution issue 4594.
    assert sorted(inv.untracked()["digest"]) == [f"sha256:{d(2)}", f"sha256:{d(3)}"]
    assert "2 cached layer(s)" in inv.verdict() and "4594" in inv.verdict()
    repos = inv.repositories().set_index("repository")
    assert repos.loc["library/b", "logical_bytes"] == 5700 and repos.loc["library/a", "tags"] == 1
    ages = inv.ages(now=NOW).set_index("age")
    assert ages.loc["<1 week", "blobs"] == 2 and ages.loc["<3 months", "bytes"] == 5000 and ages.loc["older", "blobs"] == 1
    assert "1 unreferenced blob(s), 123 bytes, could be reclaimed" in inv.verdict(quota_gb=1, price_per_gb_month=0.03)


def test_costs_carry_their_currency() -> None:
    """Every cost the cache shows names its currency: the verdict's monthly figure and price, and the
    headroom table; a cost below a cent a month is neither rounded to 0.00 nor shown as 1e-05."""
    def one_blob(size: int):  # type: ignore[no-untyped-def]
        key = f"{BASE}blobs/sha256/{d(1)[:2]}/{d(1)}/data"
        return inventory(lambda prefix: [{"Key": key, "Size": size, "LastModified": NOW}]
                         if key.startswith(prefix) else [], progress=False)

    inv = one_blob(2_000_000_000)
    verdict = inv.verdict(price_per_gb_month=0.023, currency="EUR")
    assert "At 0.023 EUR per GB-month it costs 0.05 EUR a month." in verdict, verdict
    assert "USD" in inv.verdict(price_per_gb_month=0.023)  # the default currency, named
    assert inv.headroom(0, 0.023, "EUR").iloc[0]["currency"] == "EUR"
    tiny = one_blob(1000).verdict(price_per_gb_month=0.00001)
    assert "<0.01 USD a month" in tiny and "0.00001 USD per GB-month" in tiny, tiny


def test_a_root_directory_and_an_empty_bucket() -> None:
    inv = inventory(lambda prefix: [], "/mirror", progress=False)
    assert inv.summary().iloc[0]["objects"] == 0
    assert "0 repositories" in inv.verdict()


def test_no_scheduler_state_reports_nothing_untracked() -> None:
    inv = inventory(listing_of(layout()), "", progress=False)
    assert inv.untracked().empty and "4594" not in inv.verdict()


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_an_s3_inventory_report_gives_the_listing_s_answer(tmp_path, fmt: str) -> None:
    objects = layout() + [{"Key": "elsewhere/not-the-registry", "Size": 9, "LastModified": NOW}]
    rows = [(("bucket", o["Key"].replace("/", "%2F") if fmt == "CSV" else o["Key"], o["Size"],
              o["LastModified"].isoformat())) for o in objects]
    folder = tmp_path / "dest"
    (folder / "data").mkdir(parents=True)
    con = duckdb.connect()
    con.execute("CREATE TABLE t (bucket VARCHAR, key VARCHAR, size BIGINT, last_modified_date TIMESTAMPTZ)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    if fmt == "CSV":  # AWS writes CSV without a header, keys URL-encoded, gzipped
        con.execute(f"COPY t TO '{folder}/data/part-0.csv.gz' (HEADER false, COMPRESSION gzip)")
        manifest = {"fileFormat": "CSV", "fileSchema": "Bucket, Key, Size, LastModifiedDate",
                    "files": [{"key": "data/part-0.csv.gz"}]}
    else:
        con.execute(f"COPY t TO '{folder}/data/part-0.parquet' (FORMAT parquet)")
        manifest = {"fileFormat": "Parquet", "files": [{"key": "data/part-0.parquet"}]}
    from_report = inventory_from_report(json.dumps(manifest).encode(), lambda key: (folder / key).read_bytes(),
                                        progress=False)
    listed = inventory(listing_of(layout()), "", progress=False)
    assert from_report.summary().equals(listed.summary())
    assert from_report.repositories().equals(listed.repositories())


def test_an_unknown_report_format_is_named() -> None:
    with pytest.raises(ValueError, match="'ORC' is not CSV or Parquet"):
        inventory_from_report(b'{"fileFormat": "ORC", "files": []}', lambda key: b"", progress=False)


def test_take_inventory_reads_a_local_copy_of_a_report(tmp_path) -> None:
    from registry_mirror.analysis.cache_inventory import CacheLocation, take_inventory

    con = duckdb.connect()
    con.execute("CREATE TABLE t (bucket VARCHAR, key VARCHAR, size BIGINT, last_modified_date TIMESTAMPTZ)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                    [("b", o["Key"], o["Size"], o["LastModified"]) for o in layout()])
    # The destination bucket's copy: <prefix>/<source>/<config>/data/ and .../<time>/manifest.json
    config = tmp_path / "inventory" / "mirror-bucket" / "weekly"
    (config / "data").mkdir(parents=True)
    (config / "2026-11-29T00-00Z").mkdir()
    con.execute(f"COPY t TO '{config}/data/a.parquet' (FORMAT parquet)")
    manifest = config / "2026-11-29T00-00Z" / "manifest.json"
    manifest.write_text(json.dumps({"fileFormat": "Parquet",
                                    "files": [{"key": "inventory/mirror-bucket/weekly/data/a.parquet"}]}))
    cache = CacheLocation(listing_of([]), lambda key: json.dumps(STATE).encode(), "mirror-bucket", "/")
    inv = take_inventory(cache, report=str(manifest), progress=False)
    assert inv.summary().iloc[0]["blobs"] == 4 and inv.summary().iloc[0]["scheduler_entries"] == 2
    with pytest.raises(ValueError, match="no such manifest.json"):
        take_inventory(cache, report=str(tmp_path / "missing.json"), progress=False)
