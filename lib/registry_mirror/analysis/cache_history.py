"""The cache's size over time: one row per cache_usage run, kept in the cache's own bucket.

A build's output folder is new each run, so a history there never has more than one point. The
bucket outlives every run: the history is one small CSV object there, under a prefix of its own
outside `docker/` (the registry never lists or reads it), read back, extended by this run's row and
written again. It stays small because retention counts the whole bucket: at most `MAX_ROWS` rows,
a few hundred bytes each, the oldest dropped first. Two runs at the same moment may each write
their own row over the other's (last writer wins); a scheduled job runs one at a time.
"""
from __future__ import annotations

import io
from datetime import datetime, timezone

import pandas as pd

from ..readable import human_bytes
from .cache_inventory import CacheLocation, Inventory

HISTORY_KEY = "cache-usage/history.csv"  # outside docker/: the registry never reads it
MAX_ROWS = 3650  # ten years of daily runs, about a megabyte
COLUMNS = ["taken_at", "objects", "bytes", "repositories", "blobs", "physical_blob_bytes", "logical_bytes",
           "reclaimable_bytes"]


def read_history(cache: CacheLocation, key: str = HISTORY_KEY) -> pd.DataFrame:
    """Every recorded run, oldest first (empty before the first run)."""
    if not any(o["Key"] == key for o in cache.listing(key)):
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(io.BytesIO(cache.read(key)))
    missing = sorted(set(COLUMNS) - set(frame.columns))
    if missing:
        raise ValueError(f"s3://{cache.bucket}/{key}: not a cache history (no column {missing[0]!r})")
    frame = frame[COLUMNS].assign(taken_at=pd.to_datetime(frame["taken_at"], utc=True, format="ISO8601"))
    return frame.sort_values("taken_at").reset_index(drop=True)


def record_history(cache: CacheLocation, inv: Inventory, *, now: datetime | None = None,
                   key: str = HISTORY_KEY) -> pd.DataFrame:
    """Append this run's row to the bucket's history and return the whole history."""
    if cache.write is None:
        raise ValueError(f"no S3 client to write the cache history to bucket {cache.bucket!r} with")
    row = inv.summary()[COLUMNS[1:]].assign(taken_at=(now or datetime.now(timezone.utc)).isoformat())
    row = row.assign(taken_at=pd.to_datetime(row["taken_at"], utc=True, format="ISO8601"))[COLUMNS]
    history = pd.concat([read_history(cache, key), row], ignore_index=True).tail(MAX_ROWS)
    out = history.assign(taken_at=history["taken_at"].map(lambda t: t.isoformat()))
    cache.write(key, out.to_csv(index=False).encode())
    return history.reset_index(drop=True)


def plot_growth(history: pd.DataFrame):  # type: ignore[no-untyped-def]
    """The bucket's size per run. One run is one point, labelled as such (no line, no trend drawn
    from it); from two runs on, a line over a date axis that fits the span."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(12, 3.5))
    when = pd.to_datetime(history["taken_at"], utc=True)
    size_mb = history["bytes"] / 1e6
    axis.set_ylabel("MB the cache holds")
    axis.ticklabel_format(axis="y", style="plain", useOffset=False)
    if len(history) == 1:
        axis.plot(when, size_mb, "o")
        first = human_bytes(history["bytes"].iloc[0])
        axis.annotate(f"{first}: the first recorded run; growth shows from the next one",
                      (mdates.date2num(when.iloc[0]), size_mb.iloc[0]), textcoords="offset points", xytext=(8, 8))
        axis.set_xticks([mdates.date2num(when.iloc[0])])
        axis.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d %H:%M UTC"))
        axis.set_ylim(0, max(size_mb.iloc[0] * 1.5, 1))
        axis.set_title("Cache size: one run recorded")
    else:
        axis.plot(when, size_mb, "o-" if len(history) <= 60 else "-")
        locator = mdates.AutoDateLocator()
        axis.xaxis.set_major_locator(locator)
        axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axis.set_ylim(bottom=0)
        axis.set_title(f"Cache size over {len(history)} runs")
    figure.tight_layout()
    return figure
