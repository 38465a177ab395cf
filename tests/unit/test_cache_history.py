"""The cache's growth history: kept in the bucket across runs (not in a run's output folder), one
row per run, small, and plotted honestly for one run and for many."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - before pyplot, as a kernel would pick its own backend

import pytest

from registry_mirror.analysis import cache_history
from registry_mirror.analysis.cache_history import HISTORY_KEY, plot_growth, read_history, record_history
from registry_mirror.analysis.cache_inventory import CacheLocation, inventory

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
BLOB = "docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data"


def _bucket(objects: dict[str, bytes]) -> CacheLocation:
    def listing(prefix: str):  # type: ignore[no-untyped-def]
        return [{"Key": k, "Size": len(v), "LastModified": NOW.isoformat()}
                for k, v in sorted(objects.items()) if k.startswith(prefix)]

    return CacheLocation(listing, lambda key: objects[key], "cache", "/",
                         write=lambda key, data: objects.__setitem__(key, data))


def test_the_history_persists_in_the_bucket_one_row_per_run() -> None:
    objects = {BLOB: b"x" * 5000}
    cache = _bucket(objects)
    assert read_history(cache).empty
    for day in range(3):  # three runs, each with a fresh inventory (and a fresh output folder)
        objects[BLOB] = b"x" * (5000 * (day + 1))
        history = record_history(cache, inventory(cache.listing, cache.root, progress=False),
                                 now=NOW + timedelta(days=day))
    assert not HISTORY_KEY.startswith("docker/")  # the registry never reads it
    assert [k for k in objects if k != BLOB] == [HISTORY_KEY]  # one object, whatever the number of runs
    again = read_history(cache)
    assert list(again["bytes"]) == [5000, 10000, 15000] == list(history["bytes"])
    assert list(again["taken_at"]) == [NOW + timedelta(days=d) for d in range(3)]
    assert len(objects[HISTORY_KEY]) < 1000  # one short row per run: the budget barely notices


def test_the_history_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_history, "MAX_ROWS", 2)
    cache = _bucket({BLOB: b"x"})
    inv = inventory(cache.listing, cache.root, progress=False)
    for day in range(3):
        record_history(cache, inv, now=NOW + timedelta(days=day))
    assert list(read_history(cache)["taken_at"]) == [NOW + timedelta(days=1), NOW + timedelta(days=2)]


def test_the_growth_plot_is_honest_for_one_run_and_for_many() -> None:
    import matplotlib.pyplot as plt

    cache = _bucket({BLOB: b"x" * 2_000_000})
    inv = inventory(cache.listing, cache.root, progress=False)
    one = plot_growth(record_history(cache, inv, now=NOW))
    axis = one.axes[0]
    # One run: one marker, no line drawn through it, and the plot says so.
    assert len(axis.lines) == 1 and axis.lines[0].get_linestyle() == "None"
    assert "first recorded run" in axis.texts[0].get_text() and "one run" in axis.get_title()
    assert [t.get_text() for t in axis.get_xticklabels()] == ["2026-11-01 00:00 UTC"]
    for day in range(1, 5):
        record_history(cache, inv, now=NOW + timedelta(days=day))
    many = plot_growth(read_history(cache))
    axis = many.axes[0]
    assert axis.lines[0].get_linestyle() == "-" and len(axis.lines[0].get_xdata()) == 5
    assert "5 runs" in axis.get_title() and not axis.texts
    many.canvas.draw()
    labels = " ".join(t.get_text() for t in axis.get_yticklabels() + axis.get_xticklabels())
    assert "e+" not in labels and "1e" not in labels  # plain numbers on both axes
    plt.close("all")
