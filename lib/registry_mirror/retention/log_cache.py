"""An app's recent log lines from Log Cache, Cloud Foundry's read API for recent app logs.

`GET /api/v1/read/<source id>` on the log-cache host, with the same UAA token as the CC API (the
root document's `log_cache` link). Envelopes come oldest first, at most `limit` (<= 1000) per
request, from `start_time` (nanoseconds, inclusive); the next page starts one nanosecond after the
last envelope seen. Log Cache keeps a bounded number of envelopes per source, so this runs on a
schedule and the lines go into the usage ledger, which keeps them. An unknown source (or one the
token may not read) answers 404, like a missing or invalid token: the auth proxy says nothing more.
"""
from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PAGE = 1000  # Log Cache refuses a larger limit ("limit (N) must be 1000 or less")

GetJson = Callable[[str, dict[str, Any]], dict[str, Any]]  # path, query -> JSON answer


@dataclass(frozen=True)
class LogLine:
    timestamp: int  # nanoseconds since the epoch
    instance: str
    stream: str  # OUT or ERR
    text: str


def read_app_logs(get: GetJson, source_id: str, start_ns: int = 0, *, end_ns: int = 0,
                  max_pages: int = 10_000) -> Iterator[LogLine]:
    """Every LOG envelope of `source_id` (an app guid) from `start_ns` on, oldest first."""
    start = start_ns
    for _ in range(max_pages):
        query: dict[str, Any] = {"start_time": str(start), "limit": str(PAGE), "envelope_types": "LOG"}
        if end_ns:
            query["end_time"] = str(end_ns)
        batch = ((get(f"/api/v1/read/{source_id}", query).get("envelopes") or {}).get("batch") or [])
        for envelope in batch:
            line = _line(envelope)
            if line is not None:
                yield line
        if len(batch) < PAGE:
            return
        start = max(int(e.get("timestamp", 0)) for e in batch) + 1
    raise RuntimeError(f"Log Cache read of {source_id} did not end after {max_pages} pages")


def _line(envelope: dict[str, Any]) -> LogLine | None:
    log = envelope.get("log")
    if not isinstance(log, dict):
        return None
    # protojson: int64 as a decimal string, bytes as base64.
    text = base64.b64decode(log.get("payload") or "").decode("utf-8", "replace")
    return LogLine(int(envelope.get("timestamp", 0)), str(envelope.get("instance_id", "")),
                   str(log.get("type") or "OUT"), text.rstrip("\n"))


def write_lines(lines: Iterator[LogLine], path: str) -> tuple[int, int]:
    """The lines as a log file the ledger's parsers read; returns (lines, the last timestamp)."""
    count, last = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line.text + "\n")
            count += 1
            last = max(last, line.timestamp)
    return count, last
