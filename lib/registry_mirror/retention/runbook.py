"""What retention.ipynb's cells call: the steps, with the runbook's parameters, in the order it runs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from ..analysis.cache_inventory import CacheLocation, Inventory, take_inventory
from .layout import Layout, read_layout
from .ledger import read_ledger
from .plan import RetentionPlan, plan_retention
from .policy import RetentionPolicy


@dataclass(frozen=True)
class PlannedRetention:
    inventory: Inventory
    layout: Layout
    ledger: pd.DataFrame
    plan: RetentionPlan


def log_files(proxy_logs: str, mirror_logs: str,
              platform_logs: Callable[[], tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
    """The logs the ledger reads: as given (comma-separated files, folders, globs), else what the
    platform has (the local stack's files; on Cloud Foundry both apps' lines from Log Cache)."""
    proxy = [p.strip() for p in proxy_logs.split(",") if p.strip()]
    mirror = [p.strip() for p in mirror_logs.split(",") if p.strip()]
    return (proxy, mirror) if proxy or mirror else platform_logs()


def plan_from_bucket(cache: CacheLocation, policy: RetentionPolicy, *, progress: bool = False) -> PlannedRetention:
    """List the bucket, read its images and the ledger, and plan."""
    inventory = take_inventory(cache, progress=progress)
    layout = read_layout(inventory, cache.read)
    ledger = read_ledger(cache, policy.ledger_prefix)
    # The budget is the whole bucket's: the ledger and the scheduler's state count too.
    state = f"{cache.root.strip('/')}/scheduler-state.json".lstrip("/")
    other = sum(int(o["Size"]) for prefix in (policy.ledger_prefix, state) for o in cache.listing(prefix))
    return PlannedRetention(inventory, layout, ledger, plan_retention(layout, ledger, policy, other_bytes=other))


def write_plan(planned: PlannedRetention, folder: object) -> list:  # type: ignore[type-arg]
    """The plan (with its total row) and what was kept, as CSV, and the verdict line (the pipeline's
    Slack message), for the pipeline's archive."""
    from pathlib import Path

    out = Path(str(folder))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("plan", planned.plan.table()), ("kept", planned.plan.kept)):
        path = out / f"retention_{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    verdict = out / "retention_verdict.txt"
    verdict.write_text(f"registry mirror retention: {planned.plan.verdict()}\n")
    written.append(verdict)
    return written


POLICY_OPTIONS = ("budget", "evict_after_days", "protect_days", "pinned", "price_per_gb_month", "currency",
                  "grace_seconds", "ledger_prefix")
