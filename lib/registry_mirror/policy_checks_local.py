"""The policy checks on the local platform: real clients from loopback addresses against the stack."""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .client_pull import pull_with_skopeo
from .http_clients import client_from
from .local_platform import LocalPlatform, StackState
from .policy_checks import (
    SAMPLE_IMAGE, WRITES, CheckFn, PolicyCheck, rate_limit_check, not_applicable,
    private_dir, sample_addresses, upstream_scope_check,
)
from .processes import tcp_listeners
from .registry_build import MODULE, built_registry, file_sha256, uses_debian_package
from .registry_config import registry_config_yaml
from .unix_http import unix_request

REFUSED_BY_PROXY = "this mirror is pull-only"  # the proxy's own 405 body; the registry's differs


def local_checks(stack: LocalPlatform) -> list[tuple[str, str, CheckFn]]:
    allowed, denied, unlisted = sample_addresses(stack.rules)
    url = f"http://{stack.endpoint}"
    state = StackState.load(stack.paths.state_file)

    def check(check_id: str, proves: str, how: str, expected: str, observed: str, ok: bool | None,
              next_step: str) -> PolicyCheck:
        status = "pass" if ok else ("warn" if ok is None else "fail")
        return PolicyCheck(check_id, proves, how, expected, observed, status, "" if ok else next_step)

    def allowed_api() -> PolicyCheck:
        resp = client_from(allowed).get(f"{url}/v2/", timeout=10)
        version = resp.headers.get("Docker-Distribution-Api-Version", "")
        return check("allowed-api", PROVES["allowed-api"], "GET /v2/ from an allowed client address",
                     "200 with Docker-Distribution-Api-Version: registry/2.0", f"{resp.status_code}, {version or 'no header'}",
                     resp.status_code == 200 and version == "registry/2.0",
                     "check the proxy and mirror are running (make status) and the allow-list admits the client")

    def allowed_pull() -> PolicyCheck:
        pulled = pull_with_skopeo(SAMPLE_IMAGE, registries_conf=stack.client_configs().registries_conf)
        return check("allowed-pull", PROVES["allowed-pull"], f"skopeo copy {SAMPLE_IMAGE} via a registries.conf mirror",
                     "the image arrives", pulled.verdict(), True, "")

    def refused(check_id: str, source: str | None, who: str) -> PolicyCheck:
        if source is None:
            return check(check_id, PROVES[check_id], "-", "-", f"no loopback address plays {who} under these rules",
                         None, "")
        session = client_from(source)
        probes = [("GET", "/v2/"), ("GET", "/v2/library/hello/manifests/latest"), ("HEAD", "/v2/library/hello/manifests/latest"),
                  ("GET", "/v2/library/hello/blobs/sha256:" + "0" * 64), ("GET", "/"), ("GET", "/v2/_catalog"),
                  ("POST", "/v2/policy-check/blobs/uploads/")]
        leaks = []
        for method, path in probes:
            status = session.request(method, url + path, timeout=10).status_code
            if status != 403:
                leaks.append(f"{method} {path} -> {status}")
        return check(check_id, PROVES[check_id], f"{len(probes)} requests from {who}", "403 on every one",
                     "; ".join(leaks) or f"403 on all {len(probes)}", not leaks,
                     NEXT[check_id])

    def forged_xff() -> PolicyCheck:
        if denied is None or allowed is None:
            return check("forged-xff", PROVES["forged-xff"], "-", "-", "needs an allowed and a denied loopback address",
                         None, "")
        variants = {"allowed address": allowed, "allowed first": f"{allowed}, {denied}", "allowed last": f"{denied}, {allowed}",
                    "several allowed": ", ".join([allowed] * 5), "IPv6 loopback": "::1", "garbage": "not-an-address",
                    "unix:": "unix:", "very long": ", ".join([allowed] * 300)}
        session = client_from(denied)
        baseline = session.get(f"{url}/v2/", timeout=10).status_code
        if baseline != 403:
            # Forging proves nothing when the client gets in without it; denied-listed reports that.
            return check("forged-xff", PROVES["forged-xff"], "a denied client, first without forging", "403",
                         f"inconclusive: the 'denied' client gets {baseline} without forging (see denied-listed)",
                         None, "")
        through = []
        for name, value in variants.items():
            status = session.get(f"{url}/v2/", headers={"X-Forwarded-For": value}, timeout=10).status_code
            if status not in (400, 403, 431, 494):
                through.append(f"{name} -> {status}")
        return check("forged-xff", PROVES["forged-xff"], f"{len(variants)} forged X-Forwarded-For values from a denied client",
                     "none gets through", "; ".join(through) or f"all {len(variants)} refused", not through,
                     NEXT["forged-xff"])

    def writes_at_proxy() -> PolicyCheck:
        session = client_from(allowed)
        wrong = []
        for method, path in WRITES:
            resp = session.request(method, url + path, data=b"x", timeout=10)
            if resp.status_code != 405 or REFUSED_BY_PROXY not in resp.text:
                where = "passed to the mirror" if resp.status_code == 405 else "not refused"
                wrong.append(f"{method} {path.split('/')[-2]}: {resp.status_code} ({where})")
        return check("push-refused-proxy", PROVES["push-refused-proxy"], f"{len(WRITES)} write requests from an allowed client",
                     "405 UNSUPPORTED from the proxy itself", "; ".join(wrong) or f"405 from the proxy on all {len(WRITES)}",
                     not wrong, NEXT["push-refused-proxy"])

    def writes_at_mirror() -> PolicyCheck:
        wrong = []
        for name in state.mirrors:
            sock = stack.paths.mirror_socket(name)
            for method, path in WRITES[:1]:
                resp = unix_request(str(sock), method, path)
                if resp.status != 405 or b"UNSUPPORTED" not in resp.body:
                    wrong.append(f"{name}: {resp.status}")
        return check("push-refused-mirror", PROVES["push-refused-mirror"], "POST an upload at each instance's socket",
                     "405 UNSUPPORTED (proxy mode)", "; ".join(wrong) or f"405 UNSUPPORTED from {len(state.mirrors)} instance(s)",
                     not wrong and bool(state.mirrors), NEXT["push-refused-mirror"])

    def not_exposed() -> PolicyCheck:
        exposed = []
        mirrors = [n for n in state.processes if n.startswith("mirror-")]
        for name in mirrors + ["proxy"]:
            rec = state.processes.get(name)
            if rec is not None and rec.alive() and tcp_listeners(rec.pid):
                exposed.append(f"{name} listens on TCP port(s) {sorted(p for _, p in tcp_listeners(rec.pid))}")
        if not private_dir(stack.paths.run):
            exposed.append("the socket folder is open to other users")
        return check("mirror-not-exposed", PROVES["mirror-not-exposed"],
                     "TCP listeners of every mirror process and of the proxy; socket folder mode",
                     "no TCP listener; folder 0700", "; ".join(exposed) or f"{len(mirrors)} instance(s) on unix sockets only",
                     not exposed, NEXT["mirror-not-exposed"])

    def no_redirect() -> PolicyCheck:
        from .sample_images import SAMPLE_IMAGES, build_image

        built = build_image(next(i for i in SAMPLE_IMAGES if i.repository == "library/hello"))
        layer = built.platform_manifests[0].layer_digests[0]
        path = f"/v2/library/hello/blobs/{layer}"
        problems = []
        resp = client_from(allowed).get(url + path, allow_redirects=False, timeout=30)
        if resp.status_code != 200 or "sha256:" + hashlib.sha256(resp.content).hexdigest() != layer:
            problems.append(f"proxy answered {resp.status_code} {resp.headers.get('Location', '')[:60]}")
        for name in state.mirrors:
            direct = unix_request(str(stack.paths.mirror_socket(name)), "GET", path)
            if direct.status != 200:
                problems.append(f"{name} answered {direct.status} (Location: {direct.headers.get('location', '')[:60]})")
        return check("no-s3-redirect", PROPS_NO_REDIRECT, "GET a cached blob through the proxy and at each instance",
                     "200 with the blob's bytes, never a 3xx to S3", "; ".join(problems) or "bytes, digest verified",
                     not problems, NEXT["no-s3-redirect"])

    def pinned() -> PolicyCheck:
        # Locally the "image" is Debian's docker-registry: every instance must run the packaged
        # executable, byte for byte as dpkg recorded it, at the version the params name.
        want = stack.settings.registry.version
        instances = [n for n in state.processes if n.startswith("mirror-") and state.running(n)]
        if not uses_debian_package(want):
            return _built_registry_pinned(want, {n: state.processes[n].pid for n in instances}, check)
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
        return check("image-pinned", PROVES["image-pinned"],
                     "each instance's executable against the docker-registry package (path, md5, version)",
                     f"the packaged distribution {want}", observed, not problems, NEXT["image-pinned"])

    def upstream_credentials() -> PolicyCheck:
        named = bool(stack.settings.upstream.username)
        missing = [n for n in state.mirrors if state.running(n)
                   and "REGISTRY_PROXY_PASSWORD" not in _environ_keys(state.processes[n].pid)]
        if not named:
            return check("upstream-credentials", PROVES["upstream-credentials"], "params upstream.username", "a user",
                         "anonymous upstream pulls", None, "")
        return check("upstream-credentials", PROVES["upstream-credentials"],
                     "params name a user and each instance has REGISTRY_PROXY_PASSWORD (presence only)",
                     "configured on every instance", f"missing on {missing}" if missing else "configured",
                     not missing, NEXT["upstream-credentials"])

    def rate_limit() -> PolicyCheck:
        return rate_limit_check(stack.settings, PROVES["ratelimit-headers"])

    def config_matches() -> PolicyCheck:
        drift = []
        for name in [n for n in state.processes if n.startswith("mirror-")]:
            path = stack.paths.config / f"{name}.yml"
            want = registry_config_yaml(stack._mirror_config(name))
            if not path.exists() or path.read_text() != want:
                drift.append(f"{name} config differs from the rendering")
        for nginx in ("proxy", "router"):
            path = stack.paths.config / f"{nginx}.conf"
            if not path.exists() or path.read_text() != stack._render_nginx(nginx, state):
                drift.append(f"{nginx}.conf differs from the rendering")
        return check("config-matches", PROVES["config-matches"], "running configs against a fresh rendering of the params",
                     "identical", "; ".join(drift) or "identical", not drift, NEXT["config-matches"])

    return [
        ("allowed-api", PROVES["allowed-api"], allowed_api),
        ("allowed-pull", PROVES["allowed-pull"], allowed_pull),
        ("denied-listed", PROVES["denied-listed"], lambda: refused("denied-listed", denied, "an explicitly denied client")),
        ("denied-by-default", PROVES["denied-by-default"], lambda: refused("denied-by-default", unlisted, "a client no range lists")),
        ("forged-xff", PROVES["forged-xff"], forged_xff),
        ("push-refused-proxy", PROVES["push-refused-proxy"], writes_at_proxy),
        ("push-refused-mirror", PROVES["push-refused-mirror"], writes_at_mirror),
        ("mirror-not-exposed", PROVES["mirror-not-exposed"], not_exposed),
        not_applicable("network-policy", PROVES["network-policy"], "Cloud Foundry only: locally the sockets' folder plays the policy"),
        ("no-s3-redirect", PROPS_NO_REDIRECT, no_redirect),
        ("image-pinned", PROVES["image-pinned"], pinned),
        ("upstream-credentials", PROVES["upstream-credentials"], upstream_credentials),
        ("ratelimit-headers", PROVES["ratelimit-headers"], rate_limit),
        ("cache-not-exposed", PROVES["cache-not-exposed"], lambda: cache_not_exposed(stack, unlisted or denied)),
        ("upstream-pull-only", PROVES["upstream-pull-only"],
         lambda: upstream_scope_check(stack.settings, PROVES["upstream-pull-only"])),
        ("config-matches", PROVES["config-matches"], config_matches),
    ]


PROPS_NO_REDIRECT = "layer bytes always pass through the proxy (no pre-signed S3 URL lets them bypass it)"
PROVES = {
    "allowed-api": "an allowed client reaches the registry API",
    "allowed-pull": "a real client pulls a docker.io image through the public endpoint",
    "denied-listed": "an explicitly denied client is refused on every path and verb",
    "denied-by-default": "a client in no range is refused (the policy ends in deny all)",
    "forged-xff": "a denied client cannot pass for an allowed one with X-Forwarded-For",
    "push-refused-proxy": "the proxy itself refuses every write, whatever the mirror does",
    "push-refused-mirror": "the mirror refuses pushes too (proxy mode)",
    "mirror-not-exposed": "the mirror is reachable only through the proxy",
    "network-policy": "only the proxy may connect to the mirror, on tcp 5000",
    "image-pinned": "the registry that runs is the one the pipeline tested",
    "upstream-credentials": "the mirror pulls upstream as its own account (higher rate limit)",
    "ratelimit-headers": "Docker Hub's remaining pull allowance is known",
    "upstream-pull-only": "the mirror's upstream credential can pull and nothing else",
    "cache-not-exposed": "the cache's storage answers nobody but the S3 API with keys (no filer, volume or gRPC way in)",
    "config-matches": "what runs is what the parameters render",
}
NEXT = {
    "denied-listed": "the deny ranges are not enforced: compare the deployed nginx.conf geo block with the rules file",
    "denied-by-default": "the policy lets unlisted clients in: the geo block's default must be 0 (deny all)",
    "forged-xff": "set_real_ip_from trusts too much: it must list only the router ranges (and unix: locally)",
    "push-refused-proxy": "the proxy forwards writes: restore the GET/HEAD-only map in nginx.conf",
    "push-refused-mirror": "the registry is not in proxy mode: check proxy.remoteurl in its config",
    "mirror-not-exposed": "a mirror instance listens on TCP: it must use http.net unix (locally) / apps.internal only (CF)",
    "no-s3-redirect": "set storage.redirect.disable: true in the registry config and redeploy the mirror",
    "image-pinned": "deploy the registry image the pipeline tested, pinned by digest",
    "upstream-credentials": "set the upstream password variable for every instance and redeploy",
    "config-matches": "redeploy from the parameters (the deploy runbook repairs drift), then find who edited by hand",
    "cache-not-exposed": "SeaweedFS runs without its security.toml: redeploy (it is written to secrets/seaweedfs)",
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


def _built_registry_pinned(want: str, pids: dict[str, int], check) -> PolicyCheck:  # type: ignore[no-untyped-def]
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
    return check("image-pinned", PROVES["image-pinned"],
                 "each instance's executable against the recorded build (path, sha256, module version)",
                 f"distribution {want} built from its Go module", observed, not problems, NEXT["image-pinned"])


def cache_not_exposed(stack: LocalPlatform, stranger: str | None) -> PolicyCheck:
    """From a client the proxy refuses: SeaweedFS's filer must ask for a JWT and its gRPC ports for a
    client certificate; the master must refuse to hand out a write."""
    import json

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
    return PolicyCheck("cache-not-exposed", PROVES["cache-not-exposed"],
                       "as a refused client: list the bucket on the filer, ask the master for a write, "
                       "open each gRPC port without a client certificate",
                       "401, refused, TLS alert", "; ".join(problems) or "all refused",
                       "fail" if problems else "pass", NEXT["cache-not-exposed"] if problems else "")


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _grpc_answers_without_certificate(address: str, port: int, source: str) -> bool:
    """Does the port answer an HTTP/2 preface with a SETTINGS frame, in plain text or over TLS
    without a client certificate? (A refusal is a TLS alert, a reset or silence.)"""
    import socket
    import ssl

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
