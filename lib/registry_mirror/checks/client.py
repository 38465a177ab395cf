"""Checks a client makes through the public endpoint, the same on every platform.

Locally they run from a loopback address the rules allow; on Cloud Foundry from the machine that
runs the runbook (the pipeline's worker), which the allow-list must admit. They need no denied
address, and they never print one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import requests

from ..image_refs import MANIFEST_ACCEPT, ImageRef
from .catalogue import REFUSED_BY_PROXY, WRITES
from .report import PolicyCheck, judged

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
# Forged X-Forwarded-For values an allowed client sends with a denied address in them: if nginx
# believed any of them, the allowed client would be refused.
FORGERIES = {"a denied address": "{denied}", "denied first": "{denied}, {denied}",
             "denied, then garbage": "{denied}, not-an-address", "very long": ", ".join(["{denied}"] * 300)}


@dataclass(frozen=True)
class Pulled:
    """An image pulled over the registry API, every byte checked against its digest."""

    repository: str
    digest: str  # of the platform manifest
    blobs: int
    bytes: int
    first_layer: str


def allowed_api(url: str, session: requests.Session) -> PolicyCheck:
    resp = session.get(f"{url}/v2/", timeout=15)
    version = resp.headers.get("Docker-Distribution-Api-Version", "")
    return judged("allowed-api", "GET /v2/ as an allowed client", "200 with Docker-Distribution-Api-Version: "
                  "registry/2.0", f"{resp.status_code}, {version or 'no header'}",
                  resp.status_code == 200 and version == "registry/2.0")


def pull_by_tag_and_digest(url: str, session: requests.Session, image: str) -> tuple[PolicyCheck, Pulled | None]:
    """Resolve the tag, then pull the manifest again by digest and every blob, verifying each digest."""
    ref = ImageRef.parse(image)
    try:
        pulled = pull_over_api(url, session, ref.repository, ref.tag or "latest")
    except PullFailed as exc:
        return judged("allowed-pull", f"pull {image} over the registry API", "by tag and by digest, "
                      "every digest verified", str(exc), False), None
    return judged("allowed-pull", f"pull {image} over the registry API: tag, then digest, then each blob",
                  "by tag and by digest, every digest verified",
                  f"{pulled.repository}@{pulled.digest[:19]}...: {pulled.blobs} blob(s), {pulled.bytes} bytes verified",
                  True), pulled


def catalog_refused(url: str, session: requests.Session, *, opened: bool = False) -> PolicyCheck:
    """`opened`: the params open the catalog on purpose (proxy.expose_catalog), so a listing only warns."""
    resp = session.get(f"{url}/v2/_catalog", timeout=15)
    listed = resp.status_code == 200 and "repositories" in resp.text
    if opened:
        return judged("catalog-refused", "GET /v2/_catalog as an allowed client", "listed: proxy.expose_catalog is on",
                      f"{resp.status_code}; the catalog is open to every allowed client by proxy.expose_catalog", None)
    return judged("catalog-refused", "GET /v2/_catalog as an allowed client", "refused (404), no repository list",
                  f"{resp.status_code}" + (", a repository list" if listed else ""),
                  resp.status_code == 404 and not listed)


def writes_refused(url: str, session: requests.Session) -> PolicyCheck:
    wrong = []
    for method, path in WRITES:
        resp = session.request(method, url + path, data=b"x", timeout=15)
        if resp.status_code != 405 or REFUSED_BY_PROXY not in resp.text:
            where = "passed to the mirror" if resp.status_code == 405 else "not refused"
            wrong.append(f"{method} {path.split('/')[-2]}: {resp.status_code} ({where})")
    return judged("push-refused-proxy", f"{len(WRITES)} write requests as an allowed client",
                  "405 from the proxy itself", "; ".join(wrong) or f"405 from the proxy on all {len(WRITES)}",
                  not wrong)


def blob_not_redirected(url: str, session: requests.Session, repository: str, layer: str) -> PolicyCheck:
    resp = session.get(f"{url}/v2/{repository}/blobs/{layer}", allow_redirects=False, timeout=60)
    ok = resp.status_code == 200 and "sha256:" + hashlib.sha256(resp.content).hexdigest() == layer
    # Only the Location's scheme and host: a pre-signed URL carries credentials in its query.
    where = requests.utils.urlparse(resp.headers.get("Location", "")).netloc
    return judged("no-s3-redirect", "GET a cached layer through the public endpoint, redirects not followed",
                  "200 with the layer's bytes, never a 3xx to S3",
                  "bytes, digest verified" if ok else f"{resp.status_code}" + (f" to {where}" if where else ""), ok)


def forged_xff_from_allowed(url: str, session: requests.Session, denied: str | None) -> PolicyCheck:
    """An allowed client that claims a denied address must still be judged by its own (allowed) one."""
    if denied is None:
        return judged("forged-xff", "-", "-", "the rules name no address to forge", None)
    baseline = session.get(f"{url}/v2/", timeout=15).status_code
    if baseline != 200:
        return judged("forged-xff", "GET /v2/ without a forged header", "200",
                      f"inconclusive: this client gets {baseline} without forging (see allowed-api)", None)
    changed = []
    for name, template in FORGERIES.items():
        status = session.get(f"{url}/v2/", headers={"X-Forwarded-For": template.format(denied=denied)},
                             timeout=15).status_code
        if status != 200:
            changed.append(f"{name} -> {status}")
    return judged("forged-xff", f"{len(FORGERIES)} X-Forwarded-For values naming a denied address, as an "
                  "allowed client", "the verdict stays 200 (the proxy judges the address the router saw)",
                  "; ".join(changed) or f"all {len(FORGERIES)} still 200", not changed)


class PullFailed(Exception):
    pass


def pull_over_api(url: str, session: requests.Session, repository: str, tag: str) -> Pulled:
    """What a client's pull does over HTTP: manifest by tag, the platform manifest by digest, then blobs."""
    by_tag = _get(session, f"{url}/v2/{repository}/manifests/{tag}", accept=MANIFEST_ACCEPT)
    manifest, digest = _verified_manifest(by_tag, f"{repository}:{tag}")
    if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
        entries = manifest.get("manifests") or []
        chosen = next((m for m in entries if m.get("platform", {}).get("architecture") == "amd64"),
                      entries[0] if entries else None)
        if chosen is None:
            raise PullFailed(f"{repository}:{tag} is an empty index")
        digest = chosen["digest"]
    by_digest = _get(session, f"{url}/v2/{repository}/manifests/{digest}", accept=MANIFEST_ACCEPT)
    manifest, got = _verified_manifest(by_digest, f"{repository}@{digest}")
    if got != digest:
        raise PullFailed(f"{repository}@{digest} came back as {got}")
    blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest.get("layers", []))]
    size = 0
    for blob in blobs:
        resp = _get(session, f"{url}/v2/{repository}/blobs/{blob}", accept="*/*")
        if "sha256:" + hashlib.sha256(resp.content).hexdigest() != blob:
            raise PullFailed(f"blob {blob[:19]}... of {repository} does not match its digest")
        size += len(resp.content)
    layers = manifest.get("layers") or [{"digest": blobs[0]}]
    return Pulled(repository, digest, len(blobs), size, layers[0]["digest"])


def _get(session: requests.Session, url: str, *, accept: str) -> requests.Response:
    resp = session.get(url, headers={"Accept": accept}, timeout=120)
    if resp.status_code != 200:
        raise PullFailed(f"GET {url.split('/v2/', 1)[-1]}: {resp.status_code}")
    return resp


def _verified_manifest(resp: requests.Response, what: str) -> tuple[dict, str]:
    digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
    stated = resp.headers.get("Docker-Content-Digest")
    if stated and stated != digest:
        raise PullFailed(f"{what}: Docker-Content-Digest {stated[:19]}... does not match the body")
    try:
        return json.loads(resp.content), digest
    except ValueError:
        raise PullFailed(f"{what}: the manifest is not JSON") from None
