"""Retention: keep the cache bucket within a budget, by use, while every mirror instance serves.

One concern per module: `policy` (what may be evicted, from params), `ledger` (when each image was
last pulled, kept in the bucket across runs), `layout` (what the bucket holds as images -> manifests
-> blobs), `plan` (what to evict and what that frees), `apply` (the ordered, gated deletion).
"""
