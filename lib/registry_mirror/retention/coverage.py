"""Who evicts what from the cache bucket: the registry's proxy scheduler (by age, counted from the
first fetch, for the entries it still remembers) beside retention (by last pull, from the usage
ledger). cache_usage.ipynb shows it, so an operator sees how much each mechanism bounds."""
from __future__ import annotations

import pandas as pd

from ..analysis.cache_inventory import Inventory
from ..readable import human_bytes

COLUMNS = ["mechanism", "covers", "objects", "bytes", "size", "how it evicts"]


def eviction_coverage(inventory: Inventory, ledger: pd.DataFrame) -> pd.DataFrame:
    """One row per mechanism and what it covers. Bytes are blob bytes (a blob shared by several
    entries or repositories counts once per row); `objects` counts links (scheduler) or repositories
    (retention)."""
    sizes = inventory.blobs.drop_duplicates("digest").set_index("digest")["size"]
    links = inventory.objects[inventory.objects["kind"].isin(["layer_link", "revision_link"])]
    scheduled = _scheduled_digests(inventory)
    untracked = inventory.untracked()
    pulled_repositories = set(ledger["repository"]) if not ledger.empty else set()
    repositories = set(links["repository"])
    rows = [
        _row("proxy scheduler (cache_ttl)", "cached layers and manifests it has an entry for", len(inventory.scheduler),
             _bytes(sizes, scheduled), "by age from the first fetch; a pull does not renew it"),
        _row("nothing (no scheduler entry)", "cached layers and manifests the scheduler forgot", len(untracked),
             _bytes(sizes, set(untracked["digest"])) if not untracked.empty else 0,
             "never, unless retention evicts them"),
        _row("retention (ledger)", "repositories with a pull in the ledger", len(repositories & pulled_repositories),
             _bytes(sizes, set(links[links["repository"].isin(pulled_repositories)]["digest"])),
             "by last pull, to the budget; pinned and recently pulled images stay"),
        _row("retention (no pull recorded)", "repositories the ledger has never seen pulled",
             len(repositories - pulled_repositories),
             _bytes(sizes, set(links[~links["repository"].isin(pulled_repositories)]["digest"])),
             "first, once the ledger is older than evict_after_days or the bucket is over budget"),
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _scheduled_digests(inventory: Inventory) -> set[str]:
    if inventory.scheduler.empty:
        return set()
    # Scheduler keys are `<repository>@<digest>`.
    return set(inventory.scheduler["key"].str.rpartition("@")[2])


def _bytes(sizes: pd.Series, digests: set[str]) -> int:
    return int(sizes[sizes.index.isin(digests)].sum())


def _row(mechanism: str, covers: str, objects: int, size: int, how: str) -> dict[str, object]:
    return {"mechanism": mechanism, "covers": covers, "objects": int(objects), "bytes": size,
            "size": human_bytes(size), "how it evicts": how}
