"""What the cache holds: the registry's S3 layout, listed in parallel, read as data.

The registry (distribution) stores under `<root>/docker/registry/v2/`:
    blobs/sha256/<2 hex>/<digest>/data                           the content, once per digest
    repositories/<name>/_manifests/revisions/sha256/<d>/link     a manifest the repository holds
    repositories/<name>/_manifests/tags/<tag>/current/link       what a tag points at now
    repositories/<name>/_layers/sha256/<d>/link                  a blob the repository may serve
    repositories/<name>/_uploads/<id>/...                        an upload (a pull-through mirror has none)
and, in proxy mode, `<root>/scheduler-state.json`: when each cached repository entry expires.
Blobs are sharded by the first two hex digits of their digest, so the listing runs one paginator per
shard in parallel (boto3 clients are thread-safe); the repositories are listed beside them.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

Listing = Callable[[str], Iterable[dict]]  # prefix -> objects ({"Key", "Size", "LastModified"})
SHARDS = [f"{i:02x}" for i in range(256)]


@dataclass(frozen=True)
class Inventory:
    objects: pd.DataFrame  # every object: key, size, last_modified, kind, repository, digest, tag
    scheduler: pd.DataFrame  # proxy scheduler entries: key, expiry, entry_type

    # ------------------------------------------------------------------ derived tables

    @property
    def blobs(self) -> pd.DataFrame:
        return self.objects[self.objects["kind"] == "blob"][["digest", "size", "last_modified"]]

    def referenced(self) -> set[str]:
        links = self.objects[self.objects["kind"].isin(["layer_link", "revision_link"])]
        return set(links["digest"])

    def unreferenced(self) -> pd.DataFrame:
        """Blobs no repository links to: nothing can serve them, and deleting them reclaims their bytes."""
        blobs = self.blobs
        return blobs[~blobs["digest"].isin(self.referenced())].sort_values("size", ascending=False)

    def repositories(self) -> pd.DataFrame:
        """Per repository: logical bytes (every blob it links, as if stored alone) and tags."""
        sizes = self.blobs.set_index("digest")["size"]
        links = self.objects[self.objects["kind"].isin(["layer_link", "revision_link"])]
        logical = (links.assign(size=links["digest"].map(sizes).fillna(0))
                   .drop_duplicates(["repository", "digest"])
                   .groupby("repository")["size"].sum())
        tags = self.objects[self.objects["kind"] == "tag_link"].groupby("repository")["tag"].nunique()
        frame = pd.DataFrame({"logical_bytes": logical, "tags": tags}).fillna(0)
        frame = frame.astype({"logical_bytes": "int64", "tags": "int64"}).reset_index(names="repository")
        return frame.sort_values("logical_bytes", ascending=False).reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        blobs = self.blobs
        physical = int(blobs["size"].sum())
        logical = int(self.repositories()["logical_bytes"].sum())
        unreferenced = self.unreferenced()
        uploads = self.objects[self.objects["kind"] == "upload"]
        return pd.DataFrame([{
            "objects": len(self.objects), "bytes": int(self.objects["size"].sum()),
            "repositories": int(self.objects["repository"].nunique()),
            "blobs": len(blobs), "physical_blob_bytes": physical, "logical_bytes": logical,
            "dedupe_ratio": logical / physical if physical else 1.0,
            "unreferenced_blobs": len(unreferenced), "reclaimable_bytes": int(unreferenced["size"].sum()),
            "upload_objects": len(uploads), "upload_bytes": int(uploads["size"].sum()),
            "scheduler_entries": len(self.scheduler),
        }])

    def ages(self, now: datetime | None = None) -> pd.DataFrame:
        """Blob bytes by age bucket (last write), for what an expiry policy would free."""
        now = now or datetime.now(timezone.utc)
        days = (now - pd.to_datetime(self.blobs["last_modified"], utc=True)).dt.days
        buckets = pd.cut(days, [-1, 7, 30, 90, 365, 100_000], labels=["<1 week", "<1 month", "<3 months",
                                                                        "<1 year", "older"])
        return (self.blobs.assign(age=buckets).groupby("age", observed=False)["size"]
                .agg(["count", "sum"]).rename(columns={"count": "blobs", "sum": "bytes"}).reset_index())

    def headroom(self, quota_gb: float, price_per_gb_month: float) -> pd.DataFrame:
        used_gb = int(self.objects["size"].sum()) / 1e9
        return pd.DataFrame([{"used_gb": used_gb, "quota_gb": quota_gb or None,
                              "free_gb": (quota_gb - used_gb) if quota_gb else None,
                              "used_share": used_gb / quota_gb if quota_gb else None,
                              "monthly_cost": used_gb * price_per_gb_month}])

    def verdict(self, quota_gb: float = 0.0, price_per_gb_month: float = 0.0) -> str:
        s = self.summary().iloc[0]
        room = self.headroom(quota_gb, price_per_gb_month).iloc[0]
        quota = (f" {room['used_share']:.0%} of the {quota_gb:g} GB quota is used." if quota_gb else "")
        cost = f" At {price_per_gb_month:g} per GB-month it costs {room['monthly_cost']:.2f} a month." \
            if price_per_gb_month else ""
        n = {k: int(s[k]) for k in ("repositories", "objects", "unreferenced_blobs", "upload_objects")}
        return (f"The cache holds {n['repositories']} repositories in {n['objects']} objects, "
                f"{s['bytes'] / 1e6:.1f} MB; shared layers make {s['logical_bytes'] / 1e6:.1f} MB of images take "
                f"{s['physical_blob_bytes'] / 1e6:.1f} MB (dedupe {s['dedupe_ratio']:.2f}x). "
                f"{n['unreferenced_blobs']} unreferenced blob(s), {s['reclaimable_bytes'] / 1e6:.1f} MB, could be "
                f"reclaimed; {n['upload_objects']} leftover upload object(s).{quota}{cost}")


# ------------------------------------------------------------------------------ reading the bucket

def inventory(listing: Listing, root: str = "", *, read: Callable[[str], bytes] | None = None,
              workers: int = 16, progress: bool = True) -> Inventory:
    """List the layout in parallel (one task per blob shard, one for the repositories) and classify."""
    base = _base(root)
    prefixes = [f"{base}blobs/sha256/{shard}/" for shard in SHARDS] + [f"{base}repositories/"]
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda prefix: list(listing(prefix)), prefixes)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(prefixes), desc="listing the cache", unit="prefix")
        for objects in results:
            rows.extend(objects)
    objects = classify(rows, base)
    scheduler = _scheduler(read, root) if read is not None else pd.DataFrame(columns=["key", "expiry", "entry_type"])
    return Inventory(objects, scheduler)


def classify(rows: Iterable[dict], base: str = "docker/registry/v2/") -> pd.DataFrame:
    """Each object's role in the layout, from its key alone."""
    frame = pd.DataFrame([{"key": r["Key"], "size": int(r["Size"]), "last_modified": r["LastModified"]}
                          for r in rows], columns=["key", "size", "last_modified"])
    rel = frame["key"].str.slice(len(base))
    parts = rel.str.extract(
        r"^(?:blobs/sha256/[0-9a-f]{2}/(?P<blob>[0-9a-f]{64})/data"
        r"|repositories/(?P<repository>.+?)/(?:"
        r"_manifests/revisions/sha256/(?P<revision>[0-9a-f]{64})/link"
        r"|_manifests/tags/(?P<tag>[^/]+)/(?:current/link|index/sha256/(?P<tag_index>[0-9a-f]{64})/link)"
        r"|_layers/sha256/(?P<layer>[0-9a-f]{64})/link"
        r"|(?P<upload>_uploads/.+)))$")
    kind = pd.Series("other", index=frame.index)
    kind[parts["blob"].notna()] = "blob"
    kind[parts["revision"].notna()] = "revision_link"
    kind[parts["tag"].notna() & parts["tag_index"].isna()] = "tag_link"
    kind[parts["tag_index"].notna()] = "tag_index_link"
    kind[parts["layer"].notna()] = "layer_link"
    kind[parts["upload"].notna()] = "upload"
    digest = parts["blob"].fillna(parts["revision"]).fillna(parts["layer"]).fillna(parts["tag_index"])
    return frame.assign(kind=kind, repository=parts["repository"], digest="sha256:" + digest,
                        tag=parts["tag"]).astype({"digest": "object"})


def s3_listing(client, bucket: str) -> Listing:  # type: ignore[no-untyped-def]
    """boto3's paginator for one prefix (1000 keys per request)."""
    def listing(prefix: str) -> Iterable[dict]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", [])
    return listing


def s3_reader(client, bucket: str) -> Callable[[str], bytes]:  # type: ignore[no-untyped-def]
    def read(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return read


def _base(root: str) -> str:
    root = root.strip("/")
    return f"{root}/docker/registry/v2/" if root else "docker/registry/v2/"


def _scheduler(read: Callable[[str], bytes], root: str) -> pd.DataFrame:
    """The proxy scheduler's state: one entry per cached repository and blob, with its expiry."""
    key = f"{root.strip('/')}/scheduler-state.json".lstrip("/")
    try:
        state = json.loads(read(key))
    except Exception:  # noqa: BLE001 - no state file yet (nothing expired or scheduled), or unreadable
        return pd.DataFrame(columns=["key", "expiry", "entry_type"])
    return pd.DataFrame([{"key": k, "expiry": v.get("Expiry"), "entry_type": v.get("EntryType")}
                         for k, v in state.items()], columns=["key", "expiry", "entry_type"])


@dataclass(frozen=True)
class CacheLocation:
    listing: Listing
    read: Callable[[str], bytes]
    bucket: str
    root: str

    def __repr__(self) -> str:
        return f"CacheLocation(bucket={self.bucket!r}, root={self.root!r})"  # no client, no keys


def open_cache(settings: object, *, bucket: str = "", endpoint: str = "") -> CacheLocation:
    """The mirror's bucket: on the local platform SeaweedFS with the stack's keys; elsewhere `bucket`
    (and `endpoint`) with credentials from the environment (boto3's chain: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, as the service key gives them). Keys are never shown."""
    import boto3
    from botocore.config import Config

    from ..credentials import LocalStackSecrets
    from ..errors import ParameterError
    from ..parameters import resolve_project_path

    config = Config(max_pool_connections=32, retries={"max_attempts": 3})
    local = getattr(settings, "local", None)
    storage = getattr(settings, "storage", None)
    if local is not None and storage is not None and not bucket:
        secrets = LocalStackSecrets.load_or_create(resolve_project_path(local.state_dir) / "secrets" /
                                                   "stack-secrets.json", create=False)
        client = boto3.client("s3", endpoint_url=endpoint or f"http://{local.address}:{local.s3_port}",
                              aws_access_key_id=secrets.s3_access_key.reveal(),
                              aws_secret_access_key=secrets.s3_secret_key.reveal(),
                              region_name=storage.region, config=config)
        bucket, root = storage.bucket, storage.root_directory
    else:
        if not bucket:
            raise ParameterError("parameter 'bucket' is empty: outside the local platform name the cache's bucket "
                                 "(the S3 service key's `bucket`) and put its keys in AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY")
        client = boto3.client("s3", endpoint_url=endpoint or None, config=config)
        root = (storage.root_directory if storage is not None else "/")
    return CacheLocation(s3_listing(client, bucket), s3_reader(client, bucket), bucket, root)


def plot(inv: Inventory):  # type: ignore[no-untyped-def]
    """Two panels: the largest repositories (logical bytes) and blob bytes by age."""
    # The kernel's backend draws it (inline in Jupyter and under papermill): never forced here.
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    top = inv.repositories().head(10)
    left.barh(top["repository"], top["logical_bytes"] / 1e6)
    left.invert_yaxis()
    left.set_xlabel("MB (as if stored alone)")
    left.set_title("Largest repositories")
    ages = inv.ages()
    right.bar(ages["age"].astype(str), ages["bytes"] / 1e6)
    right.set_ylabel("MB")
    right.set_title("Blob bytes by age of last write")
    figure.tight_layout()
    return figure


def write(inv: Inventory, folder, quota_gb: float = 0.0, price_per_gb_month: float = 0.0) -> list:  # type: ignore[no-untyped-def]
    """The tables as CSV, and the summary appended to history.csv for growth over time."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    tables = {"summary": inv.summary(), "repositories": inv.repositories(), "unreferenced": inv.unreferenced(),
              "ages": inv.ages(), "scheduler": inv.scheduler, "headroom": inv.headroom(quota_gb, price_per_gb_month)}
    for name, frame in tables.items():
        path = folder / f"cache_{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    history = folder / "cache_history.csv"
    row = inv.summary().assign(taken_at=datetime.now(timezone.utc).isoformat())
    row.to_csv(history, mode="a", header=not history.exists(), index=False)
    written.append(history)
    return written
