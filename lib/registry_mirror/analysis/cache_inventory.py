"""What the cache holds: the registry's S3 layout, listed in parallel, read as data.

The registry (distribution) stores under `<root>/docker/registry/v2/`:
    blobs/sha256/<2 hex>/<digest>/data                           the content, once per digest
    repositories/<name>/_manifests/revisions/sha256/<d>/link     a manifest the repository holds
    repositories/<name>/_manifests/tags/<tag>/current/link       what a tag points at now
    repositories/<name>/_layers/sha256/<d>/link                  a blob the repository may serve
    repositories/<name>/_uploads/<id>/...                        an upload (a pull-through mirror has none)
and, in proxy mode, `<root>/scheduler-state.json`: when each cached repository entry expires.
Blobs are sharded by the first two hex digits of their digest, so the listing runs one paginator per
shard in parallel (boto3 clients are thread-safe); repositories are found with delimiter listings and
listed one per task beside them, because one listing of a whole tree is the slow path on S3 stores
that keep folders (SeaweedFS's filer walks them). For buckets of tens of millions of objects,
`inventory_from_report` reads an S3 Inventory report (CSV or Parquet) instead, with the same output.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..readable import human_bytes, money, price, summary_table

Listing = Callable[[str], Iterable[dict]]  # prefix -> objects ({"Key", "Size", "LastModified"})
Folders = Callable[[str], tuple[list[dict], list[str]]]  # prefix -> (objects right there, sub-prefixes)
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

    def untracked(self) -> pd.DataFrame:
        """Cached layers and manifests the proxy scheduler has no entry for: they never expire. With
        several mirror instances on one bucket, each rewrites scheduler-state.json from its own memory
        and drops the others' entries (distribution issue 4594); this is how that shows in storage.
        Empty when there is no scheduler state at all (no proxy TTL, or nothing saved yet)."""
        columns = ["repository", "digest", "kind"]
        if self.scheduler.empty:
            return pd.DataFrame(columns=columns)
        links = self.objects[self.objects["kind"].isin(["layer_link", "revision_link"])]
        # Scheduler keys are `<repository>@<digest>`; EntryType 0 is a blob, 1 a manifest.
        wanted = links["repository"] + "@" + links["digest"] + "/" + (links["kind"] == "revision_link").astype(int).astype(str)
        known = set(self.scheduler["key"] + "/" + self.scheduler["entry_type"].astype("Int64").astype(str))
        return links[~wanted.isin(known)][columns].reset_index(drop=True)

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
            "scheduler_entries": len(self.scheduler), "untracked_by_scheduler": len(self.untracked()),
        }])

    def summary_table(self) -> pd.DataFrame:
        """The summary as an operator reads it: whole counts, sizes in human units."""
        return summary_table(self.summary().iloc[0], sizes=("bytes", "physical_blob_bytes", "logical_bytes",
                                                            "reclaimable_bytes", "upload_bytes"))

    def ages(self, now: datetime | None = None) -> pd.DataFrame:
        """Blob bytes by age bucket (last write), for what an expiry policy would free."""
        now = now or datetime.now(timezone.utc)
        days = (now - pd.to_datetime(self.blobs["last_modified"], utc=True)).dt.days
        buckets = pd.cut(days, [-1, 7, 30, 90, 365, 100_000], labels=["<1 week", "<1 month", "<3 months",
                                                                        "<1 year", "older"])
        return (self.blobs.assign(age=buckets).groupby("age", observed=False)["size"]
                .agg(["count", "sum"]).rename(columns={"count": "blobs", "sum": "bytes"}).reset_index())

    def headroom(self, quota_gb: float, price_per_gb_month: float, currency: str = "USD") -> pd.DataFrame:
        used_gb = int(self.objects["size"].sum()) / 1e9
        return pd.DataFrame([{"used_gb": used_gb, "quota_gb": quota_gb or None,
                              "free_gb": (quota_gb - used_gb) if quota_gb else None,
                              "used_share": used_gb / quota_gb if quota_gb else None,
                              "monthly_cost": used_gb * price_per_gb_month, "currency": currency}])

    def verdict(self, quota_gb: float = 0.0, price_per_gb_month: float = 0.0, currency: str = "USD") -> str:
        s = self.summary().iloc[0]
        room = self.headroom(quota_gb, price_per_gb_month, currency).iloc[0]
        quota = (f" {room['used_share']:.0%} of the {quota_gb:,.10g} GB quota is used." if quota_gb else "")
        cost = (f" At {price(price_per_gb_month, currency, 'GB-month')} it costs "
                f"{money(room['monthly_cost'], currency)} a month." if price_per_gb_month else "")
        n = {k: int(s[k]) for k in ("repositories", "objects", "unreferenced_blobs", "upload_objects",
                                    "untracked_by_scheduler")}
        untracked = (f" {n['untracked_by_scheduler']} cached layer(s) or manifest(s) have no scheduler entry and "
                     "will never expire: several mirror instances overwriting one scheduler state do this "
                     "(distribution issue 4594)." if n["untracked_by_scheduler"] else "")
        return (f"The cache holds {n['repositories']} repositories in {n['objects']} objects, "
                f"{human_bytes(s['bytes'])}; shared layers make {human_bytes(s['logical_bytes'])} of images take "
                f"{human_bytes(s['physical_blob_bytes'])} (dedupe {s['dedupe_ratio']:.2f}x). "
                f"{n['unreferenced_blobs']} unreferenced blob(s), {human_bytes(s['reclaimable_bytes'])}, could be "
                f"reclaimed; {n['upload_objects']} leftover upload object(s).{untracked}{quota}{cost}")


# ------------------------------------------------------------------------------ reading the bucket

def take_inventory(cache: "CacheLocation", *, report: str = "", progress: bool = True) -> Inventory:
    """The cache's inventory: listed, or read from the S3 Inventory report whose manifest.json is at
    `report` (`s3://bucket/key`, read with the cache's credentials, or a local copy of the destination
    bucket, whose data files are found beside the manifest's folders)."""
    if not report:
        return inventory(cache.listing, cache.root, read=cache.read, folders=cache.folders, progress=progress)
    if report.startswith("s3://"):
        bucket, _, key = report[len("s3://"):].partition("/")
        read = cache.reader_for(bucket)
        manifest = read(key)
    else:
        path = Path(report)
        if not path.is_file():
            raise ValueError(f"inventory_report {report!r}: no such manifest.json")
        manifest = path.read_bytes()
        read = _local_report_reader(path)
    return inventory_from_report(manifest, read, cache.root, read_state=cache.read, progress=progress)


def inventory(listing: Listing, root: str = "", *, read: Callable[[str], bytes] | None = None,
              folders: Folders | None = None, workers: int = 64, progress: bool = True) -> Inventory:
    """List the layout in parallel (one task per blob shard and, given `folders`, one per repository;
    else one for all repositories) and classify every object."""
    base = _base(root)
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if folders is None:
            repositories = [f"{base}repositories/"]
        else:
            loose, repositories = _find_repositories(pool, folders, f"{base}repositories/")
            rows.extend(loose)
        prefixes = [f"{base}blobs/sha256/{shard}/" for shard in SHARDS] + repositories
        results = pool.map(lambda prefix: list(listing(prefix)), prefixes)
        if progress:
            results = _progress(results, True, "listing the cache", total=len(prefixes))
        for objects in results:
            rows.extend(objects)
    return Inventory(classify(rows, base), _scheduler(read, root))


def inventory_from_report(manifest: bytes, read: Callable[[str], bytes], root: str = "", *,
                          read_state: Callable[[str], bytes] | None = None, progress: bool = True) -> Inventory:
    """The same inventory from an S3 Inventory report instead of a listing: `manifest` is the report's
    manifest.json, `read` fetches one of its data files by key (from the destination bucket or a local
    copy of it). CSV (gzipped, keys URL-encoded) and Parquet reports are read by DuckDB."""
    import tempfile

    import duckdb

    spec = json.loads(manifest)
    fmt = str(spec.get("fileFormat", "")).upper()
    if fmt not in ("CSV", "PARQUET"):
        raise ValueError(f"S3 Inventory report format {spec.get('fileFormat')!r} is not CSV or Parquet")
    files = [f["key"] for f in spec.get("files", [])]
    with tempfile.TemporaryDirectory(prefix="s3-inventory-") as tmp:
        paths = []
        for i, key in enumerate(_progress(files, progress, "reading the inventory report")):
            path = f"{tmp}/{i}.{'csv.gz' if fmt == 'CSV' else 'parquet'}"
            with open(path, "wb") as out:
                out.write(read(key))
            paths.append(path)
        if not paths:
            return Inventory(classify_frame(pd.DataFrame(columns=["key", "size", "last_modified"])),
                             _scheduler(read_state, root))
        if fmt == "CSV":
            names = [n.strip() for n in str(spec["fileSchema"]).split(",")]
            frame = duckdb.sql(
                "SELECT url_decode(Key) AS key, CAST(Size AS BIGINT) AS size, LastModifiedDate AS last_modified "
                "FROM read_csv($paths, header=false, names=$names, all_varchar=true, compression='gzip') "
                "WHERE Size IS NOT NULL", params={"paths": paths, "names": names}).df()
        else:
            frame = duckdb.sql("SELECT key, size, last_modified_date AS last_modified FROM read_parquet($paths) "
                               "WHERE size IS NOT NULL", params={"paths": paths}).df()
    base = _base(root)
    return Inventory(classify_frame(frame[frame["key"].str.startswith(base)].reset_index(drop=True), base),
                     _scheduler(read_state, root))


def classify(rows: Iterable[dict], base: str = "docker/registry/v2/") -> pd.DataFrame:
    """Each object's role in the layout, from its key alone."""
    frame = pd.DataFrame([{"key": r["Key"], "size": int(r["Size"]), "last_modified": r["LastModified"]}
                          for r in rows], columns=["key", "size", "last_modified"])
    return classify_frame(frame, base)


def classify_frame(frame: pd.DataFrame, base: str = "docker/registry/v2/") -> pd.DataFrame:
    """`classify` for a frame of key, size, last_modified (vectorised: tens of millions of rows)."""
    # Listings may carry timestamps as text (the fast parser keeps them so): one vectorised parse here.
    frame = frame.assign(size=frame["size"].astype("int64"),
                         last_modified=pd.to_datetime(frame["last_modified"], utc=True, format="ISO8601"))
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


def s3_folders(client, bucket: str) -> Folders:  # type: ignore[no-untyped-def]
    """One level of a prefix: its objects and its sub-prefixes (a delimiter listing)."""
    def folders(prefix: str) -> tuple[list[dict], list[str]]:
        objects: list[dict] = []
        subs: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            objects.extend(page.get("Contents", []))
            subs.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return objects, subs
    return folders


def s3_reader(client, bucket: str) -> Callable[[str], bytes]:  # type: ignore[no-untyped-def]
    def read(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return read


def s3_writer(client, bucket: str) -> Callable[[str, bytes], None]:  # type: ignore[no-untyped-def]
    def write(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return write


def s3_deleter(client, bucket: str) -> Callable[[list[str]], None]:  # type: ignore[no-untyped-def]
    """Delete keys, 1000 per request (S3's limit for one DeleteObjects); a key that is already gone
    is not an error (S3 answers deleted for it), any other per-key error is."""
    def delete(keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            answer = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk],
                                                                  "Quiet": True})
            errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise RuntimeError(f"S3 refused to delete {len(errors)} object(s) of bucket {bucket!r}, "
                                   f"first {errors[0].get('Key')!r}: {errors[0].get('Code')}")
    return delete


def base_prefix(root: str) -> str:
    """Where the registry's layout starts under the storage root."""
    return _base(root)


def _base(root: str) -> str:
    root = root.strip("/")
    return f"{root}/docker/registry/v2/" if root else "docker/registry/v2/"


def _local_report_reader(manifest: Path) -> Callable[[str], bytes]:
    """Data file keys are relative to the destination bucket: find the ancestor of the manifest that
    is that bucket's copy (the manifest sits at <prefix>/<source bucket>/<config>/<time>/)."""
    def read(key: str) -> bytes:
        for folder in manifest.parents:
            if (folder / key).is_file():
                return (folder / key).read_bytes()
        raise ValueError(f"inventory report data file {key!r} is not under any folder above {manifest}")
    return read


def _find_repositories(pool: ThreadPoolExecutor, folders: Folders, top: str) -> tuple[list[dict], list[str]]:
    """Every repository prefix under `top` (a folder holding _manifests/, _layers/ or _uploads/; names
    may nest, e.g. library/ubuntu), one delimiter listing per folder, each level in parallel."""
    loose: list[dict] = []
    repositories: list[str] = []
    level = [top]
    while level:
        following: list[str] = []
        for prefix, (objects, subs) in zip(level, pool.map(folders, level)):
            loose.extend(objects)
            if any(s[len(prefix):] in ("_manifests/", "_layers/", "_uploads/") for s in subs):
                repositories.append(prefix)
            else:
                following.extend(subs)
        level = following
    return loose, repositories


def _progress(items: Iterable, enabled: bool, desc: str, total: int | None = None):  # type: ignore[no-untyped-def]
    if not enabled:
        return items
    # tqdm.auto wants ipywidgets in a kernel and warns (TqdmWarning) into the run's output without it;
    # the text bar works everywhere, updated at most every few seconds so a log stays short.
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm

    return tqdm(items, desc=desc, total=total, mininterval=5)


def _scheduler(read: Callable[[str], bytes] | None, root: str) -> pd.DataFrame:
    """The proxy scheduler's state: one entry per cached repository and blob, with its expiry."""
    if read is None:
        return pd.DataFrame(columns=["key", "expiry", "entry_type"])
    key = f"{root.strip('/')}/scheduler-state.json".lstrip("/")
    try:
        state = json.loads(read(key))
    except Exception:  # noqa: BLE001 - no state file yet (nothing expired or scheduled), or unreadable
        return pd.DataFrame(columns=["key", "expiry", "entry_type"])
    # The registry writes the expiry as "ExpiryData" (registry/proxy/scheduler/scheduler.go, 3.0.0).
    return pd.DataFrame([{"key": v.get("Key", k), "expiry": v.get("ExpiryData"), "entry_type": v.get("EntryType")}
                         for k, v in state.items()], columns=["key", "expiry", "entry_type"])


@dataclass(frozen=True)
class CacheLocation:
    listing: Listing
    read: Callable[[str], bytes]
    bucket: str
    root: str
    folders: Folders | None = None
    reader_for: Callable[[str], Callable[[str], bytes]] = lambda bucket: _no_reader(bucket)
    # Writes and deletes, for retention's ledger and eviction; the analyses only read.
    write: Callable[[str, bytes], None] | None = None
    delete: Callable[[list[str]], None] | None = None

    def __repr__(self) -> str:
        return f"CacheLocation(bucket={self.bucket!r}, root={self.root!r})"  # no client, no keys


def open_cache(settings: object, *, bucket: str = "", endpoint: str = "") -> CacheLocation:
    """The mirror's bucket: on the local platform SeaweedFS with the stack's keys; elsewhere `bucket`
    (and `endpoint`) with credentials from the environment (boto3's chain: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, as the service key gives them). Keys are never shown."""
    from ..credentials import LocalStackSecrets
    from ..errors import ParameterError
    from ..parameters import resolve_project_path
    from ..s3_clients import s3_client

    local = getattr(settings, "local", None)
    storage = getattr(settings, "storage", None)
    if local is not None and storage is not None and not bucket:
        secrets = LocalStackSecrets.load_or_create(resolve_project_path(local.state_dir) / "secrets" /
                                                   "stack-secrets.json", create=False)
        client = s3_client(endpoint=endpoint or f"http://{local.address}:{local.s3_port}",
                           access_key=secrets.s3_access_key.reveal(), secret_key=secrets.s3_secret_key.reveal(),
                           region=storage.region, purpose="inventory")
        bucket, root = storage.bucket, storage.root_directory
    else:
        if not bucket:
            raise ParameterError("parameter 'bucket' is empty: outside the local platform name the cache's bucket "
                                 "(the S3 service key's `bucket`) and put its keys in AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY")
        client = s3_client(endpoint=endpoint or None, region=None, purpose="inventory")
        root = (storage.root_directory if storage is not None else "/")
    return CacheLocation(s3_listing(client, bucket), s3_reader(client, bucket), bucket, root,
                         s3_folders(client, bucket), lambda other: s3_reader(client, other),
                         s3_writer(client, bucket), s3_deleter(client, bucket))


def _no_reader(bucket: str) -> Callable[[str], bytes]:
    raise ValueError(f"no S3 client to read bucket {bucket!r} with")


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


def write(inv: Inventory, folder, quota_gb: float = 0.0, price_per_gb_month: float = 0.0,  # type: ignore[no-untyped-def]
          currency: str = "USD", history: pd.DataFrame | None = None) -> list:
    """The tables as CSV, and a copy of the bucket's history (cache_history.csv) when given: the
    history itself lives in the bucket, where the next run finds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    tables = {"summary": inv.summary(), "repositories": inv.repositories(), "unreferenced": inv.unreferenced(),
              "ages": inv.ages(), "scheduler": inv.scheduler, "untracked": inv.untracked(),
              "headroom": inv.headroom(quota_gb, price_per_gb_month, currency)}
    if history is not None:
        tables["history"] = history
    for name, frame in tables.items():
        path = folder / f"cache_{name}.csv"
        frame.to_csv(path, index=False)
        written.append(path)
    return written
