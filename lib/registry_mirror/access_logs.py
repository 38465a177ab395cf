"""Parsers for the logs the stack writes, in production formats: the registry's JSON lines and the
proxy's CF `NginxLog` lines. Results are DataFrames, one row per request."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

REGISTRY_COLUMNS = ["time", "method", "uri", "status", "bytes", "duration", "user_agent", "instance", "service"]
NGINX_COLUMNS = ["forwarded_for", "method", "uri", "status", "bytes", "client", "request_time",
                 "upstream_addr", "upstream_time", "cache"]

_NGINX = re.compile(
    r'^NginxLog "(?P<forwarded_for>[^"]*)" "(?P<method>\S+) (?P<uri>\S+)[^"]*" (?P<status>\d{3}) '
    r'(?P<bytes>\d+) client=(?P<client>\S+) rt=(?P<request_time>\S+) urt=(?P<upstream_time>\S+) '
    r'ua="(?P<upstream_addr>[^"]*)" cache=(?P<cache>\S+)')


def read_registry_log(path: Path | str, *, offset: int = 0) -> pd.DataFrame:
    """Completed requests from a registry's JSON log, from byte `offset` on."""
    rows = []
    for line in _lines(path, offset):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a Go panic or a plain-text line; not a request
        if not str(entry.get("msg", "")).startswith("response completed"):
            continue
        rows.append({
            "time": entry.get("time"),
            "method": entry.get("http.request.method"),
            "uri": entry.get("http.request.uri"),
            "status": int(entry.get("http.response.status", 0)),
            "bytes": int(entry.get("http.response.written", 0)),
            "duration": entry.get("http.response.duration"),
            "user_agent": entry.get("http.request.useragent"),
            "instance": entry.get("instance"),
            "service": entry.get("service"),
        })
    frame = pd.DataFrame(rows, columns=REGISTRY_COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def read_nginx_log(path: Path | str, *, offset: int = 0) -> pd.DataFrame:
    """Requests from the security proxy's access log (CF NginxLog format, extended)."""
    rows = [m.groupdict() for m in map(_NGINX.match, _lines(path, offset)) if m]
    frame = pd.DataFrame(rows, columns=NGINX_COLUMNS)
    frame["status"] = frame["status"].astype(int)
    frame["bytes"] = frame["bytes"].astype(int)
    return frame


def upstream_manifest_gets(frame: pd.DataFrame) -> pd.DataFrame:
    """Manifest GETs answered 200: what Docker Hub counts as pulls (a HEAD is not counted)."""
    is_manifest = frame["uri"].str.contains("/manifests/", regex=False)
    return frame[(frame["method"] == "GET") & is_manifest & (frame["status"] == 200)]


def log_size(path: Path | str) -> int:
    """Current size of a log: remember it, act, then read from it as `offset` to see only new lines."""
    p = Path(path)
    return p.stat().st_size if p.exists() else 0


def _lines(path: Path | str, offset: int) -> list[str]:
    p = Path(path)
    if not p.exists():
        return []
    with open(p, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace").splitlines()
