"""The security proxy's access logs as one DuckDB table, whatever form they come in.

Two formats: the original deployment's `NginxLog "$http_x_forwarded_for" "$request" $status
$body_bytes_sent`, and this project's extension of it (`client=`, timings, the mirror instance,
`cache=`, `t=`). Either as plain files or inside `cf logs --recent` dumps, where they are the
`[APP/PROC/WEB/n] OUT` lines between router (RTR), API, CELL and stderr lines; those (and blank
lines) are counted as skipped. Any other line that does not parse (a damaged NginxLog line, bytes
that are not text, a file that is not a proxy log at all) is counted as malformed, never fatal. DuckDB
reads the files itself (globs, folders, s3:// through httpfs), so memory stays flat whatever their size.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

CF_TIME = r"^\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)"
# A line of a `cf logs` dump that is not the proxy's (router, API, cell, staging, stderr), or its header.
CF_OTHER = r"^\s*\d{4}-\d\d-\d\dT\S+ \[[A-Z]+[/\]]|^Retrieving logs for "


@dataclass(frozen=True)
class LogLoad:
    """The parsed requests, counted per kind and hour (table `requests` in `db`: `n` requests of that
    kind, `bytes` their body bytes), and what was left out, with why."""

    db: duckdb.DuckDBPyConnection
    lines: int
    requests: int
    skipped: int  # not the proxy's: router, API, cell, stderr lines of a cf logs dump, blank lines
    malformed: int  # neither a request nor another component's line: damaged, binary, not a proxy log
    first: pd.Timestamp | None = None  # the earliest and latest request time the lines carry
    last: pd.Timestamp | None = None

    def summary(self) -> str:
        if not self.requests:
            return (f"no requests in these logs: {self.lines} line(s), {self.skipped} of other components "
                    f"skipped, {self.malformed} malformed")
        return (f"{self.requests} requests from {self.lines} lines; {self.skipped} other lines skipped, "
                f"{self.malformed} malformed lines")


def load_proxy_logs(sources: Sequence[str | Path], db: duckdb.DuckDBPyConnection | None = None, *,
                    bucket_hours: int = 1) -> LogLoad:
    """Parse every line of `sources` (files, folders, globs) into the table `requests`, counted per
    kind of request and time bucket of `bucket_hours`."""
    db = db or duckdb.connect()
    # Rows need no order, which lets DuckDB stream the scan instead of buffering it.
    db.execute("SET preserve_insertion_order = false")
    files = expand_sources(sources)
    if not files:
        raise FileNotFoundError(f"no log files in {', '.join(map(str, sources))}")
    lines_view(db, files)
    # Split on the double quotes instead of one regex over the line (four times faster): both formats
    # give `prefix NginxLog | xff | | request | status bytes [client= rt= urt= ua=] | [instance | cache= t=]`.
    db.execute(f"""
        CREATE OR REPLACE TABLE requests AS
        {REQUEST_LINES}
        -- Counted per kind of request and hour as the scan goes: the table holds one row per distinct
        -- kind, not per line, so memory stays flat whatever the log's size.
        SELECT coalesce(client, forwarded_for) AS seen, method, status, cache, original,
               time_bucket(INTERVAL '{int(bucket_hours)} hours', time) AS hour,
               CASE WHEN at_manifest > 5 THEN substr(path, 5, at_manifest - 5)
                    WHEN at_blob > 5 THEN substr(path, 5, at_blob - 5) END AS repository,
               CASE WHEN at_manifest > 5 THEN 'manifests' WHEN at_blob > 5 THEN 'blobs' END AS object,
               at_manifest > 5 AND prefix(substr(path, at_manifest + 11), 'sha256:') AS by_digest,
               count(*) AS n, sum(bytes) AS bytes, min(time) AS first, max(time) AS last
        FROM located GROUP BY ALL
    """)
    lines, other = db.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE NOT coalesce(contains(line, 'NginxLog "'), false)
                                         AND (coalesce(trim(line), '') = '' OR regexp_matches(line, '{CF_OTHER}')))
        FROM lines""").fetchone()
    parsed, first, last = db.execute("SELECT coalesce(sum(n), 0), min(first), max(last) FROM requests").fetchone()
    # Lines DuckDB could not read as text at all (binary garbage) are malformed too.
    unreadable = max(0, line_count(files) - lines)
    return LogLoad(db, lines=lines + unreadable, requests=int(parsed), skipped=int(other),
                   malformed=int(lines - other - parsed + unreadable),
                   first=stamp_utc(first), last=stamp_utc(last))


# Common table expressions over the view `lines`, ending in `located`: one row per NginxLog request
# line that parses whole, with method, path, status, bytes, client, cache, instance, time, and where
# in the path /manifests/ and /blobs/ start. The savings analysis counts them; the retention ledger
# takes each image's last pull from them.
REQUEST_LINES = f"""
        WITH quoted AS (
            SELECT line, string_split(line, '"') AS p FROM lines WHERE contains(line, 'NginxLog "')
        ), fields AS (
            SELECT line, p, string_split(p[4], ' ') AS req, string_split(trim(p[5]), ' ') AS mid,
                   CASE WHEN len(p) = 7 THEN string_split(trim(p[7]), ' ') ELSE [] END AS tail
            FROM quoted WHERE len(p) IN (5, 7) AND suffix(p[1], 'NginxLog ')
        ), parsed AS (
            SELECT p[2] AS forwarded_for, req[1] AS method, req[2] AS path,
                   TRY_CAST(mid[1] AS INTEGER) AS status, TRY_CAST(mid[2] AS BIGINT) AS bytes,
                   CASE WHEN len(mid) >= 3 AND prefix(mid[3], 'client=') THEN substr(mid[3], 8) END AS client,
                   CASE WHEN len(tail) >= 1 AND prefix(tail[1], 'cache=') THEN substr(tail[1], 7) END AS cache,
                   CASE WHEN len(p) = 7 THEN p[6] END AS instance,
                   CASE WHEN len(tail) >= 2 AND prefix(tail[2], 't=') THEN TRY_CAST(substr(tail[2], 3) AS TIMESTAMPTZ)
                        ELSE TRY_CAST(nullif(regexp_extract(p[1], '{CF_TIME}', 1), '') AS TIMESTAMP)::TIMESTAMPTZ
                   END AS time,
                   len(p) = 5 AS original, len(req) = 3 AND len(mid) = CASE WHEN len(p) = 5 THEN 2 ELSE 6 END AS whole
            FROM fields
        )
        , located AS (
            -- /v2/<repository>/manifests/<reference> or /v2/<repository>/blobs/<digest>: string
            -- positions, ten times cheaper than a regex per line.
            SELECT *, strpos(path, '/manifests/') AS at_manifest, strpos(path, '/blobs/') AS at_blob
            FROM parsed WHERE status IS NOT NULL AND bytes IS NOT NULL AND whole
        )
"""


def line_count(files: list[str]) -> int:
    """Newline-terminated lines (and a last unterminated one) of the local files; s3:// ones are not
    counted here (what DuckDB read of them is all that is known)."""
    total = 0
    for name in files:
        if "://" in name or any(ch in name for ch in "*?["):
            continue
        with open(name, "rb") as f:
            tail = b""
            for chunk in iter(lambda: f.read(1 << 20), b""):
                total += chunk.count(b"\n")
                tail = chunk[-1:]
            total += tail not in (b"", b"\n")
    return total


def stamp_utc(value: object) -> pd.Timestamp | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def lines_view(db: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """The view `lines`: every line of `files`, one VARCHAR column, streamed by DuckDB's CSV reader."""
    # A delimiter and quote that never occur, no type guessing. A view cannot take parameters: the
    # file list goes in as a quoted literal. Lines that are not UTF-8 text are dropped, not fatal: the
    # caller counts them as malformed.
    listing = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    db.execute(f"""
        CREATE OR REPLACE TEMP VIEW lines AS
        SELECT line FROM read_csv({listing}, columns={{'line': 'VARCHAR'}}, delim=chr(31), quote='', escape='',
                                  header=false, auto_detect=false, null_padding=true, max_line_size=1048576,
                                  ignore_errors=true, strict_mode=false)
    """)


def expand_sources(sources: Sequence[str | Path]) -> list[str]:
    files: list[str] = []
    for source in sources:
        text = str(source)
        path = Path(text)
        if "://" in text or any(ch in text for ch in "*?["):
            files.append(text)  # DuckDB expands globs and reads s3:// itself
        elif path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(text)
    return files
