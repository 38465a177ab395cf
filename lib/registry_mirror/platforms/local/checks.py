"""verify_policies on the local platform: real clients from loopback addresses against the stack."""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from ...checks import client
from ...checks.addresses import sample_addresses
from ...checks.catalogue import CHECK_IMAGE, WRITES
from ...checks.report import CheckFn, PolicyCheck, judged, not_applicable
from ...checks.upstream import rate_limit_check, upstream_scope_check
from ...client_pull import pull_with_skopeo
from ...config_drift import config_drift
from ...http_clients import client_from
from ...processes import session_members, tcp_listeners
from ...registry_build import MODULE, built_registry, uses_debian_package
from ...registry_config import registry_config_yaml
from ...unix_http import unix_request
from .exposure import cache_not_exposed
from .state import StackState
from .worker_access import worker_uids

if TYPE_CHECKING:
    from .platform import LocalPlatform

PROBES = [("GET", "/v2/"), ("GET", "/v2/library/hello/manifests/latest"), ("HEAD", "/v2/library/hello/manifests/latest"),
          ("GET", "/v2/library/hello/blobs/sha256:" + "0" * 64), ("GET", "/"), ("GET", "/v2/_catalog"),
          ("POST", "/v2/policy-check/blobs/uploads/")]


def local_checks(stack: LocalPlatform, *, image: str | None = None) -> dict[str, CheckFn]:
    """Every check, played by clients from the loopback addresses the rules allow, deny and omit."""
    allowed, denied, unlisted = sample_addresses(stack.rules)
    url = f"http://{stack.endpoint}"
    image = image or CHECK_IMAGE["local"]
    state = StackState.load(stack.paths.state_file)
    pulled: list[client.Pulled] = []

    def as_allowed() -> requests.Session:
        if allowed is None:
            raise LookupError("no loopback address is allowed by these rules, so no client can play a user")
        return client_from(allowed)

    def allowed_pull() -> PolicyCheck:
        # Over the API first: it resolves the tag to the digest the mirror serves (skopeo's own
        # record of it is the digest of the OCI manifest it converted to, which no registry holds).
        result, api = client.pull_by_tag_and_digest(url, as_allowed(), image)
        if api is None:
            return result
        pulled.append(api)
        conf = stack.client_configs().registries_conf
        by_tag = pull_with_skopeo(image, registries_conf=conf)
        by_digest = pull_with_skopeo(f"docker.io/{api.repository}@{api.digest}", registries_conf=conf)
        return judged("allowed-pull", f"pull {image} over the API (tag, digest, each blob), then skopeo copy by tag "
                      "and by that digest via a registries.conf mirror", "all arrive, every digest verified",
                      f"{result.observed}; skopeo: {by_tag.verdict()}, by digest {by_digest.layers} layer(s)", True)

    def refused(check_id: str, source: str | None, who: str) -> PolicyCheck:
        if source is None:
            return judged(check_id, "-", "-", f"no loopback address plays {who} under these rules", None)
        session = client_from(source)
        leaks = []
        for method, path in PROBES:
            status = session.request(method, url + path, timeout=10).status_code
            if status != 403:
                leaks.append(f"{method} {path} -> {status}")
        return judged(check_id, f"{len(PROBES)} requests from {who}", "403 on every one",
                      "; ".join(leaks) or f"403 on all {len(PROBES)}", not leaks)

    def forged_xff() -> PolicyCheck:
        if denied is None or allowed is None:
            return judged("forged-xff", "-", "-", "needs an allowed and a denied loopback address", None)
        variants = {"allowed address": allowed, "allowed first": f"{allowed}, {denied}",
                    "allowed last": f"{denied}, {allowed}", "several allowed": ", ".join([allowed] * 5),
                    "IPv6 loopback": "::1", "garbage": "not-an-address", "unix:": "unix:",
                    "very long": ", ".join([allowed] * 300)}
        session = client_from(denied)
        baseline = session.get(f"{url}/v2/", timeout=10).status_code
        if baseline != 403:
            # Forging proves nothing when the client gets in without it; denied-listed reports that.
            return judged("forged-xff", "a denied client, first without forging", "403",
                          f"inconclusive: the 'denied' client gets {baseline} without forging (see denied-listed)",
                          None)
        through = []
        for name, value in variants.items():
            status = session.get(f"{url}/v2/", headers={"X-Forwarded-For": value}, timeout=10).status_code
            if status not in (400, 403, 431, 494):
                through.append(f"{name} -> {status}")
        allowed_side = client.forged_xff_from_allowed(url, as_allowed(), denied)
        if allowed_side.status != "pass":
            through.append(f"an allowed client forging: {allowed_side.observed}")
        return judged("forged-xff", f"{len(variants)} forged X-Forwarded-For values from a denied client, "
                      f"{len(client.FORGERIES)} from an allowed one", "no verdict changes",
                      "; ".join(through) or "no verdict changed", not through)

    def writes_at_mirror() -> PolicyCheck:
        wrong = []
        for name in state.mirrors:
            for method, path in WRITES[:1]:
                resp = unix_request(str(stack.paths.mirror_socket(name)), method, path)
                if resp.status != 405 or b"UNSUPPORTED" not in resp.body:
                    wrong.append(f"{name}: {resp.status}")
        return judged("push-refused-mirror", "POST an upload at each instance's socket", "405 UNSUPPORTED (proxy mode)",
                      "; ".join(wrong) or f"405 UNSUPPORTED from {len(state.mirrors)} instance(s)",
                      not wrong and bool(state.mirrors))

    def not_exposed() -> PolicyCheck:
        exposed = []
        mirrors = [n for n in state.processes if n.startswith("mirror-")]
        for name in mirrors + ["proxy"]:
            rec = state.processes.get(name)
            if rec is not None and rec.alive() and tcp_listeners(rec.pid):
                exposed.append(f"{name} listens on TCP port(s) {sorted(p for _, p in tcp_listeners(rec.pid))}")
        exposed += stack.paths.access.problems()
        workers: list[int] = []
        for name in ("proxy", "router"):
            rec = state.processes.get(name)
            if rec is not None:
                workers += sorted(session_members(rec) - {rec.pid})
        root_workers = [pid for pid, uid in worker_uids(workers).items() if uid == 0]
        if root_workers:
            exposed.append(f"{len(root_workers)} nginx worker(s) run as root")
        who = stack.paths.access.user or "the invoking user"
        return judged("mirror-not-exposed", "TCP listeners of every mirror process and of the proxy; socket folder "
                      "owner and mode; uid of every nginx worker",
                      "no TCP listener; socket folder closed to other users; no worker as root",
                      "; ".join(exposed) or f"{len(mirrors)} instance(s) on unix sockets only, reachable by root "
                      f"and {who}; {len(workers)} nginx worker(s) as {who}", not exposed)

    def no_redirect() -> PolicyCheck:
        if not pulled:
            return judged("no-s3-redirect", "-", "a layer pulled by allowed-pull", "nothing was pulled", False)
        through_proxy = client.blob_not_redirected(url, as_allowed(), pulled[0].repository,
                                                   pulled[0].first_layer)
        path = f"/v2/{pulled[0].repository}/blobs/{pulled[0].first_layer}"
        problems = [] if through_proxy.status == "pass" else [f"proxy: {through_proxy.observed}"]
        for name in state.mirrors:
            direct = unix_request(str(stack.paths.mirror_socket(name)), "GET", path)
            if direct.status != 200:
                problems.append(f"{name} answered {direct.status}")
        return judged("no-s3-redirect", "GET a cached layer through the proxy and at each instance",
                      "200 with the layer's bytes, never a 3xx to S3", "; ".join(problems) or "bytes, digest verified",
                      not problems)

    def pinned() -> PolicyCheck:
        instances = {n: state.processes[n].pid for n in state.processes if n.startswith("mirror-") and state.running(n)}
        return image_pinned(stack.settings.registry.version, instances)

    def upstream_credentials() -> PolicyCheck:
        missing = [n for n in state.mirrors if state.running(n)
                   and "REGISTRY_PROXY_PASSWORD" not in _environ_keys(state.processes[n].pid)]
        if not stack.settings.upstream.username:
            return judged("upstream-credentials", "params upstream.username", "a user", "anonymous upstream pulls",
                          None)
        return judged("upstream-credentials", "params name a user and each instance has REGISTRY_PROXY_PASSWORD "
                      "(presence only)", "configured on every instance",
                      f"missing on {missing}" if missing else "configured", not missing)

    def config_matches() -> PolicyCheck:
        running = [(f"{name}.yml", registry_config_yaml(stack.configs.mirror_config(name)))
                   for name in state.processes if name.startswith("mirror-")]
        running += [(f"{nginx}.conf", stack.configs.nginx_conf(nginx, state.mirrors)) for nginx in ("proxy", "router")]
        drift = [config_drift(name, rendered, _read(stack.paths.config / name)) for name, rendered in running]
        differ = [d.describe() for d in drift if not d.identical]
        # Line numbers only: the proxy's config holds the allow-list.
        return judged("config-matches", "running configs against a fresh rendering of the params", "identical",
                      "; ".join(differ) or f"{len(drift)} configs identical", not differ)

    return {
        "allowed-api": lambda: client.allowed_api(url, as_allowed()),
        "allowed-pull": allowed_pull,
        "denied-listed": lambda: refused("denied-listed", denied, "an explicitly denied client"),
        "denied-by-default": lambda: refused("denied-by-default", unlisted, "a client no range lists"),
        "forged-xff": forged_xff,
        "push-refused-proxy": lambda: client.writes_refused(url, as_allowed()),
        "push-refused-mirror": writes_at_mirror,
        "catalog-refused": lambda: client.catalog_refused(url, as_allowed(),
                                                          opened=stack.settings.proxy.expose_catalog),
        "mirror-not-exposed": not_exposed,
        "network-policy": lambda: not_applicable("network-policy", "Cloud Foundry only: locally the socket "
                                                 "folder's owner and mode play the policy (mirror-not-exposed)"),
        "no-s3-redirect": no_redirect,
        "image-pinned": pinned,
        "upstream-credentials": upstream_credentials,
        "upstream-pull-only": lambda: upstream_scope_check(stack.settings),
        "ratelimit-headers": lambda: rate_limit_check(stack.settings),
        "cache-not-exposed": lambda: cache_not_exposed(stack),
        "config-matches": config_matches,
    }


@dataclass(frozen=True)
class PinnedBinary:
    """The registry executable a version names, and the digest it was recorded with."""
    path: str
    algorithm: str  # hashlib's name: "sha256" (our build record), "md5" (dpkg's md5sums)
    digest: str
    source: str  # "built from <module>", "packaged by Debian"

    def matches(self, path: Path) -> bool:
        with open(path, "rb") as f:
            # md5 only because dpkg records it: this compares with a record, it proves no origin.
            return hashlib.file_digest(f, lambda: hashlib.new(self.algorithm, usedforsecurity=False)
                                       ).hexdigest() == self.digest


def image_pinned(want: str, pids: dict[str, int]) -> PolicyCheck:
    """Every instance (name -> pid) runs the registry binary `want` names, byte for byte: for 3.x the
    build bootstrap made from the Go module, for 2.8.2 Debian's docker-registry as dpkg recorded it."""
    pinned, problems = _packaged_registry(want) if uses_debian_package(want) else _built_registry(want)
    for name, pid in pids.items():
        exe = os.readlink(f"/proc/{pid}/exe")
        if pinned is not None and exe != pinned.path:
            problems.append(f"{name} runs {exe}, not {pinned.path} ({pinned.source})")
        elif pinned is not None and not pinned.matches(Path(exe)):
            problems.append(f"{name} runs a {exe} whose {pinned.algorithm} differs from the record")
    source = pinned.source if pinned is not None else "its recorded binary"
    return judged("image-pinned", "each instance's executable against the recorded binary (path, digest, version)",
                  f"distribution {want}, {source}",
                  "; ".join(problems) or f"{len(pids)} instance(s) run distribution {want}, {source}", not problems)


def _built_registry(want: str) -> tuple[PinnedBinary | None, list[str]]:
    build = built_registry(want)
    if build is None:
        return None, [f"registry {want} was never built (run `make bootstrap`)"]
    return PinnedBinary(build.binary, "sha256", build.sha256, f"built from {MODULE}"), []


def _packaged_registry(want: str) -> tuple[PinnedBinary | None, list[str]]:
    sums = Path("/var/lib/dpkg/info/docker-registry.md5sums")
    lines = sums.read_text().splitlines() if sums.exists() else []
    md5 = next((digest for digest, _, rel in (line.partition("  ") for line in lines)
                if rel == "usr/bin/docker-registry"), None)
    if md5 is None:
        return None, ["the docker-registry package is not installed"]
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "docker-registry"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    problems = ([] if version.startswith(want + "+") or version.split("-")[0] == want
                else [f"package version {version}, params {want}"])
    return PinnedBinary("/usr/bin/docker-registry", "md5", md5, "packaged by Debian"), problems


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _environ_keys(pid: int) -> set[str]:
    """Names (never values) of a process's environment variables."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {entry.split(b"=", 1)[0].decode(errors="replace") for entry in raw.split(b"\0") if entry}
