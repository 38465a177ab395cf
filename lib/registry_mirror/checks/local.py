"""The policy checks on the local platform: real clients from loopback addresses against the stack."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from ..client_pull import pull_with_skopeo
from ..http_clients import client_from
from ..platforms.local.stack import LocalPlatform, StackState
from ..processes import session_members, tcp_listeners
from ..registry_build import MODULE, built_registry, file_sha256, uses_debian_package
from ..registry_config import registry_config_yaml
from ..unix_http import unix_request
from ..platforms.local.worker_access import worker_uids
from . import client
from .addresses import sample_addresses
from .catalogue import CHECK_IMAGE, WRITES
from .report import CheckFn, PolicyCheck, judged, not_applicable
from .upstream import rate_limit_check, upstream_scope_check

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
        # With 2.8.x the "image" is Debian's docker-registry: every instance must run the packaged
        # executable, byte for byte as dpkg recorded it, at the version the params name.
        want = stack.settings.registry.version
        instances = [n for n in state.processes if n.startswith("mirror-") and state.running(n)]
        if not uses_debian_package(want):
            return _built_registry_pinned(want, {n: state.processes[n].pid for n in instances})
        package = _packaged_registry()
        problems = []
        if package is None:
            problems.append("the docker-registry package is not installed")
        elif not package.version.startswith(want + "+") and package.version.split("-")[0] != want:
            problems.append(f"package version {package.version}, params {want}")
        for name in instances:
            exe = os.readlink(f"/proc/{state.processes[name].pid}/exe")
            if package is not None and exe != package.path:
                problems.append(f"{name} runs {exe}, not the packaged {package.path}")
            elif package is not None and _md5(exe) != package.md5:
                problems.append(f"{name} runs a {exe} that differs from what dpkg installed")
        observed = "; ".join(problems) or f"{len(instances)} instance(s) run the packaged distribution {want}"
        return judged("image-pinned", "each instance's executable against the docker-registry package (path, md5, "
                      "version)", f"the packaged distribution {want}", observed, not problems)

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
        drift = []
        for name in [n for n in state.processes if n.startswith("mirror-")]:
            path = stack.paths.config / f"{name}.yml"
            if not path.exists() or path.read_text() != registry_config_yaml(stack._mirror_config(name)):
                drift.append(f"{name} config differs from the rendering")
        for nginx in ("proxy", "router"):
            path = stack.paths.config / f"{nginx}.conf"
            if not path.exists() or path.read_text() != stack._render_nginx(nginx, state):
                drift.append(f"{nginx}.conf differs from the rendering")
        return judged("config-matches", "running configs against a fresh rendering of the params", "identical",
                      "; ".join(drift) or "identical", not drift)

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
        "cache-not-exposed": lambda: cache_not_exposed(stack, unlisted or denied),
        "config-matches": config_matches,
    }


@dataclass(frozen=True)
class _Package:
    path: str
    md5: str
    version: str


def _packaged_registry() -> _Package | None:
    sums = Path("/var/lib/dpkg/info/docker-registry.md5sums")
    if not sums.exists():
        return None
    for line in sums.read_text().splitlines():
        md5, _, rel = line.partition("  ")
        if rel == "usr/bin/docker-registry":
            version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "docker-registry"],
                                     capture_output=True, text=True, timeout=10).stdout.strip()
            return _Package("/usr/bin/docker-registry", md5, version)
    return None


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _environ_keys(pid: int) -> set[str]:
    """Names (never values) of a process's environment variables."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {entry.split(b"=", 1)[0].decode(errors="replace") for entry in raw.split(b"\0") if entry}


def _built_registry_pinned(want: str, pids: dict[str, int]) -> PolicyCheck:
    """3.x locally: every instance runs the binary bootstrap built from the module at `want`, byte for byte."""
    build = built_registry(want)
    problems = []
    if build is None:
        problems.append(f"registry {want} was never built (run `make bootstrap`)")
    for name, pid in pids.items():
        exe = os.readlink(f"/proc/{pid}/exe")
        if build is not None and exe != build.binary:
            problems.append(f"{name} runs {exe}, not the built {build.binary}")
        elif build is not None and file_sha256(Path(exe)) != build.sha256:
            problems.append(f"{name} runs a {exe} whose checksum differs from the recorded build")
    observed = "; ".join(problems) or f"{len(pids)} instance(s) run distribution {want} as built from {MODULE}"
    return judged("image-pinned", "each instance's executable against the recorded build (path, sha256, module "
                  "version)", f"distribution {want} built from its Go module", observed, not problems)


def cache_not_exposed(stack: LocalPlatform, stranger: str | None) -> PolicyCheck:
    """From a client the proxy refuses: SeaweedFS's filer must ask for a JWT and its gRPC ports for a
    client certificate; the master must refuse to hand out a write."""
    ports = json.loads((stack.paths.secrets / "s3-ports.json").read_text())
    address = stack.local.address
    source = stranger or address
    session = client_from(source)
    problems = []
    assert stack.settings.storage is not None
    listing = session.get(f"http://{address}:{ports['filer']}/buckets/{stack.settings.storage.bucket}/",
                          headers={"Accept": "application/json"}, timeout=5)
    if listing.status_code != 401:
        problems.append(f"filer listed the bucket ({listing.status_code})")
    assign = session.get(f"http://{address}:{ports['master']}/dir/assign", timeout=5)
    if assign.status_code == 200 and "fid" in assign.text:
        problems.append("master handed out a write")
    for name in ("master.grpc", "volume.grpc", "filer.grpc", "gateway.grpc"):
        if _grpc_answers_without_certificate(address, ports[name], source):
            problems.append(f"{name} speaks HTTP/2 to a client without a certificate")
    return judged("cache-not-exposed", "as a refused client: list the bucket on the filer, ask the master for a "
                  "write, open each gRPC port without a client certificate", "401, refused, TLS alert",
                  "; ".join(problems) or "all refused", not problems)


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _grpc_answers_without_certificate(address: str, port: int, source: str) -> bool:
    """Does the port answer an HTTP/2 preface with a SETTINGS frame, in plain text or over TLS
    without a client certificate? (A refusal is a TLS alert, a reset or silence.)"""
    def settings_frame(data: bytes) -> bool:
        return len(data) >= 9 and data[3] == 0x04

    try:
        with socket.create_connection((address, port), timeout=3, source_address=(source, 0)) as raw:
            raw.sendall(_H2_PREFACE)
            if settings_frame(raw.recv(64)):
                return True
    except OSError:
        pass
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((address, port), timeout=3, source_address=(source, 0)) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(_H2_PREFACE)
                return settings_frame(tls.recv(64))
    except OSError:  # ssl.SSLError is one
        return False
