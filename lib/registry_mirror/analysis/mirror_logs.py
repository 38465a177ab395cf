"""What the mirrors fetched from Docker Hub, exactly: from their JSON logs or their Prometheus counters.

The proxy's log can only bound the upstream pulls from above (a manifest GET that reached a mirror
may have been served from its storage). The mirror itself knows. Two ways to ask it:

- Its JSON log (registry 2.8 and 3.x, level info): every object fetched from the upstream and stored
  is scheduled for expiry with `Adding new scheduler entry for <repository>@<digest>`
  (registry/proxy/scheduler/scheduler.go), and only then (proxymanifeststore.go, proxyblobstore.go).
  A blob fetch is also a `response completed` line for `/v2/<repository>/blobs/<digest>` on the same
  mirror; any other scheduled digest was a manifest GET upstream, which is a counted Docker Hub pull.
  Lines may come inside `cf logs --recent` dumps (the JSON after the `[APP/PROC/WEB/n] ERR` prefix);
  lines without JSON are skipped, JSON that does not parse is counted as malformed.
- Its `/metrics` (3.x debug listener, Prometheus text): `registry_proxy_misses_total{type="manifest"}`
  counts manifests fetched upstream since the instance started; one scrape per instance, summed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from .proxy_logs import expand_sources, lines_view, stamp_utc

SCHEDULED = "Adding new scheduler entry for "


@dataclass(frozen=True)
class UpstreamFetches:
    """Objects the mirrors fetched from the upstream: manifests (counted pulls) and blobs."""

    manifests: int
    blobs: int
    repositories: pd.DataFrame  # repository, manifests, blobs (empty from metrics: they are not per repository)
    windows: pd.DataFrame  # window_start, manifests (empty from metrics)
    source: str  # "mirror logs" or "mirror metrics"
    lines: int = 0
    skipped: int = 0
    malformed: int = 0
    first: pd.Timestamp | None = None  # the earliest and latest time a log line carries (logs only)
    last: pd.Timestamp | None = None

    def summary(self) -> str:
        if self.source == "mirror metrics":
            return f"{self.manifests} manifest(s) and {self.blobs} blob(s) fetched upstream, from the mirrors' counters"
        return (f"{self.manifests} manifest(s) and {self.blobs} blob(s) fetched upstream, from {self.lines} mirror "
                f"log lines ({self.skipped} without JSON skipped, {self.malformed} malformed)")


def load_mirror_logs(sources: Sequence[str | Path], *, window_hours: int = 6) -> UpstreamFetches:
    """Count the mirrors' upstream fetches in their JSON logs (files, folders, globs, s3://)."""
    files = expand_sources(sources)
    if not files:
        raise FileNotFoundError(f"no mirror log files in {', '.join(map(str, sources))}")
    db = duckdb.connect()
    db.execute("SET preserve_insertion_order = false")
    lines_view(db, files)
    db.execute("""
        CREATE OR REPLACE TEMP TABLE events AS
        WITH candidates AS (
            SELECT substr(line, strpos(line, '{')) AS text FROM lines WHERE strpos(line, '{') > 0
        ), parsed AS (
            SELECT json_valid(text) AS ok, CASE WHEN json_valid(text) THEN text::JSON END AS j FROM candidates
        )
        SELECT ok, j->>'msg' AS msg, j->>'http.request.uri' AS uri, j->>'instance.id' AS instance,
               TRY_CAST(j->>'time' AS TIMESTAMPTZ) AS time
        FROM parsed
    """)
    db.execute(f"""
        CREATE OR REPLACE TEMP TABLE fetched AS
        WITH scheduled AS (
            SELECT regexp_extract(msg, '{SCHEDULED}(.+)@(sha256:[0-9a-f]{{64}})', ['repository', 'digest']) AS r,
                   instance, time
            FROM events WHERE ok AND prefix(msg, '{SCHEDULED}')
        ), blobs_served AS (
            SELECT DISTINCT instance, regexp_extract(uri, '^/v2/(.+)/blobs/(sha256:[0-9a-f]{{64}})',
                                                     ['repository', 'digest']) AS r
            FROM events WHERE ok AND msg = 'response completed' AND contains(uri, '/blobs/sha256:')
        )
        SELECT s.r.repository AS repository, s.r.digest AS digest, s.time,
               EXISTS (SELECT 1 FROM blobs_served b WHERE b.instance = s.instance AND b.r = s.r) AS is_blob
        FROM scheduled s WHERE s.r.digest <> ''
    """)
    repositories = db.execute("""
        SELECT repository, count(*) FILTER (WHERE NOT is_blob) AS manifests, count(*) FILTER (WHERE is_blob) AS blobs
        FROM fetched GROUP BY repository ORDER BY manifests DESC, repository
    """).df()
    windows = db.execute(f"""
        SELECT time_bucket(INTERVAL '{int(window_hours)} hours', time) AS window_start,
               count(*) FILTER (WHERE NOT is_blob) AS manifests
        FROM fetched WHERE time IS NOT NULL GROUP BY window_start ORDER BY window_start
    """).df()
    manifests, blobs = db.execute("SELECT count(*) FILTER (WHERE NOT is_blob), count(*) FILTER (WHERE is_blob) "
                                  "FROM fetched").fetchone()
    lines = db.execute("SELECT count(*) FROM lines").fetchone()[0]
    candidates, malformed, first, last = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE NOT ok), min(time), max(time) FROM events").fetchone()
    return UpstreamFetches(int(manifests), int(blobs), repositories, windows, "mirror logs", lines=int(lines),
                           skipped=int(lines - candidates), malformed=int(malformed),
                           first=stamp_utc(first), last=stamp_utc(last))


def load_mirror_metrics(sources: Sequence[str | Path]) -> UpstreamFetches:
    """Sum `registry_proxy_misses_total` over saved `/metrics` scrapes, one file per mirror instance."""
    from prometheus_client.parser import text_string_to_metric_families

    files = expand_sources(sources)
    if not files:
        raise FileNotFoundError(f"no metrics files in {', '.join(map(str, sources))}")
    misses = {"manifest": 0.0, "blob": 0.0}
    for file in files:
        for family in text_string_to_metric_families(Path(file).read_text()):
            for sample in family.samples:
                if sample.name == "registry_proxy_misses_total" and sample.labels.get("type") in misses:
                    misses[sample.labels["type"]] += sample.value
    empty = pd.DataFrame(columns=["repository", "manifests", "blobs"])
    return UpstreamFetches(int(misses["manifest"]), int(misses["blob"]), empty,
                           pd.DataFrame(columns=["window_start", "manifests"]), "mirror metrics")


def upstream_fetches(settings: object, mirror_logs: str, mirror_metrics: str, *,
                     log_sources: str = "") -> UpstreamFetches | None:
    """What the runbook counts upstream fetches from: `mirror_metrics` (saved /metrics scrapes) or
    `mirror_logs` (comma-separated files, folders, globs, s3://); on the local platform, with neither
    given and the proxy's own log read (no `log_sources`), its mirrors' logs. None otherwise: proxy
    logs from elsewhere (a `cf logs` dump) are never matched with this machine's mirrors, and the
    proxy's upper bound stands."""
    from ..parameters import resolve_project_path

    if mirror_metrics.strip():
        return load_mirror_metrics(_split(mirror_metrics))
    if mirror_logs.strip():
        return load_mirror_logs(_split(mirror_logs))
    local = getattr(settings, "local", None)
    if local is None or log_sources.strip():
        return None
    logs = sorted(str(p) for p in (resolve_project_path(local.state_dir) / "logs").glob("mirror-*.log"))
    return load_mirror_logs(logs) if logs else None


def _split(given: str) -> list[str]:
    return [part.strip() for part in given.split(",") if part.strip()]
