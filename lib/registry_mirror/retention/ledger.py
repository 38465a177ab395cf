"""The usage ledger: when each image (repository and tag, or manifest digest) was last pulled.

Pulls are manifest GETs answered 200, read from the security proxy's access log (every pull it
served, cached or not) and from the mirrors' JSON logs (pulls that reached a mirror), with the same
parsers the savings analysis uses. Logs are short-lived (rotated locally, hours of Log Cache on
Cloud Foundry), so each run appends what it read to the ledger: one Parquet part per run in the
bucket under a prefix of its own, outside `docker/`, which the registry never lists or reads. The
ledger's answer is the latest pull per image over every part; parts are merged once there are many.
"""
from __future__ import annotations

import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from ..analysis.cache_inventory import CacheLocation
from ..analysis.proxy_logs import REQUEST_LINES, expand_sources, lines_view

COLUMNS = ["repository", "reference", "last_pull"]
MERGE_AFTER_PARTS = 30  # parts beyond this are merged into one on the next update


@dataclass(frozen=True)
class LedgerUpdate:
    read: pd.DataFrame  # what this run's logs show: repository, reference, last_pull
    written: str  # the part's key in the bucket ("" when nothing was read or in a dry run)
    parts: int  # parts in the ledger after the update

    def summary(self) -> str:
        where = f"appended as {self.written}" if self.written else "nothing appended"
        return (f"{len(self.read)} image reference(s) with a pull in the logs read; {where}; "
                f"the ledger has {self.parts} part(s)")


def pulls_from_logs(proxy_logs: Sequence[str | Path] = (), mirror_logs: Sequence[str | Path] = ()) -> pd.DataFrame:
    """The latest pull per repository and reference (a tag, or sha256:<digest>) in these logs."""
    frames = []
    proxy_files, mirror_files = expand_sources(proxy_logs), expand_sources(mirror_logs)
    db = duckdb.connect()
    db.execute("SET preserve_insertion_order = false")
    if proxy_files:
        lines_view(db, proxy_files)
        frames.append(db.execute(f"""
            {REQUEST_LINES}
            SELECT substr(path, 5, at_manifest - 5) AS repository,
                   split_part(substr(path, at_manifest + 11), '?', 1) AS reference, max(time) AS last_pull
            FROM located
            WHERE at_manifest > 5 AND method = 'GET' AND status = 200 AND time IS NOT NULL
            GROUP BY ALL
        """).df())
    if mirror_files:
        lines_view(db, mirror_files)
        frames.append(db.execute("""
            WITH candidates AS (
                SELECT substr(line, strpos(line, '{')) AS text FROM lines WHERE strpos(line, '{') > 0
            ), events AS (
                SELECT text::JSON AS j FROM candidates WHERE json_valid(text)
            ), requests AS (
                SELECT j->>'http.request.uri' AS uri, TRY_CAST(j->>'time' AS TIMESTAMPTZ) AS time
                FROM events
                WHERE j->>'msg' = 'response completed' AND j->>'http.request.method' = 'GET'
                  AND TRY_CAST(j->>'http.response.status' AS INTEGER) = 200 AND contains(j->>'http.request.uri', '/manifests/')
            )
            SELECT regexp_extract(uri, '^/v2/(.+)/manifests/([^?]+)', 1) AS repository,
                   regexp_extract(uri, '^/v2/(.+)/manifests/([^?]+)', 2) AS reference, max(time) AS last_pull
            FROM requests WHERE time IS NOT NULL GROUP BY ALL
        """).df())
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return _latest(pd.concat(frames, ignore_index=True))


def update_ledger(cache: CacheLocation, prefix: str, proxy_logs: Sequence[str | Path] = (),
                  mirror_logs: Sequence[str | Path] = (), *, dry_run: bool = False) -> LedgerUpdate:
    """Append what the logs show to the ledger in the bucket (one Parquet part), merging old parts."""
    read = pulls_from_logs(proxy_logs, mirror_logs)
    keys = _part_keys(cache, prefix)
    if dry_run or read.empty:
        return LedgerUpdate(read, "", len(keys))
    if cache.write is None or cache.delete is None:
        raise ValueError(f"no S3 client to write the ledger to bucket {cache.bucket!r} with")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if len(keys) >= MERGE_AFTER_PARTS:
        merged = _latest(pd.concat([read, _read_parts(cache, keys)], ignore_index=True))
        key = f"{prefix}merged-{stamp}-{secrets.token_hex(3)}.parquet"
        cache.write(key, _parquet(merged))
        cache.delete(keys)  # only after the merged part is written: a failure loses nothing
        return LedgerUpdate(read, key, 1)
    key = f"{prefix}part-{stamp}-{secrets.token_hex(3)}.parquet"
    cache.write(key, _parquet(read))
    return LedgerUpdate(read, key, len(keys) + 1)


def read_ledger(cache: CacheLocation, prefix: str) -> pd.DataFrame:
    """The latest pull per repository and reference over every part of the ledger."""
    keys = _part_keys(cache, prefix)
    return _latest(_read_parts(cache, keys)) if keys else pd.DataFrame(columns=COLUMNS)


def _part_keys(cache: CacheLocation, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in cache.listing(prefix) if o["Key"].endswith(".parquet"))


def _read_parts(cache: CacheLocation, keys: list[str]) -> pd.DataFrame:
    with tempfile.TemporaryDirectory(prefix="ledger-") as tmp:
        paths = []
        for i, key in enumerate(keys):
            path = Path(tmp) / f"{i}.parquet"
            path.write_bytes(cache.read(key))
            paths.append(str(path))
        return duckdb.sql("SELECT repository, reference, last_pull FROM read_parquet($paths)",
                          params={"paths": paths}).df()


def _latest(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(last_pull=pd.to_datetime(frame["last_pull"], utc=True))
    frame = frame[(frame["repository"] != "") & (frame["reference"] != "")]
    return (frame.groupby(["repository", "reference"], as_index=False)["last_pull"].max()
            .sort_values(["repository", "reference"]).reset_index(drop=True))[COLUMNS]


def _parquet(frame: pd.DataFrame) -> bytes:
    # DuckDB writes Parquet itself: no pyarrow needed.
    db = duckdb.connect()
    db.register("ledger", frame)
    with tempfile.TemporaryDirectory(prefix="ledger-") as tmp:
        path = Path(tmp) / "part.parquet"
        db.execute(f"COPY (SELECT repository, reference, last_pull::TIMESTAMPTZ AS last_pull FROM ledger) "
                   f"TO '{path}' (FORMAT PARQUET)")
        return path.read_bytes()
