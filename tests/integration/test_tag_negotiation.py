"""No client can change what another client receives for a tag, on either rendering of the security proxy.

The registry answers a tag with the manifest list to a client whose Accept lines take lists and with
its linux/amd64 manifest to one whose lines do not, so the proxy's tag cache must tell those clients
apart by every Accept line, and by nothing a client can shape into another client's key. Each attack
primes the cache first, then the victim asks; the victim must get its own answer.

Both renderings run against the shared stack's registry release, S3 and Docker Hub stand-in: the local
one is the stack itself; the Cloud Foundry one is the buildpack rendering behind the edge stand-ins,
with a registry started from the production mirror manifest's environment as the mirror app.
"""
from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import yaml

from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.parameters import load_params_file
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.daemons import daemon_env
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local.mirrors import mirror_registry_binary
from registry_mirror.processes import ProcessRecord, free_port, start_process, stop_process, wait_until
from registry_mirror.registry_config import S3Location
from registry_mirror.rendering import render_cf_manifests
from registry_mirror.sample_images import BuiltImage, SampleImage, build_image, seed_registry
from registry_mirror.security_rules import SecurityRules
from tests.fakes.cf_edge import LOAD_BALANCER, MIRROR_CONTAINER, cf_edge

pytestmark = pytest.mark.integration

PRODUCTION = load_params_file("params/production.yaml")
CLIENT = "127.0.0.10"  # allowed on both renderings
CF_RULES = SecurityRules(allow=["127.0.0.1/32", f"{CLIENT}/32"], trusted_routers=[f"{LOAD_BALANCER}/32"])

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# What skopeo 1.9.3 (containers/image) sends for a manifest: one Accept line per type, seen on the wire.
SKOPEO_UA = "skopeo/1.9.3"
SKOPEO_ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.v1+prettyjws",
                 "application/vnd.docker.distribution.manifest.v1+json", DOCKER_LIST, OCI_INDEX]


@dataclass(frozen=True)
class Endpoint:
    rendering: str
    host: str
    port: int

    def ask(self, path: str, headers: list[tuple[str, str]], method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """One request with these header lines exactly (repeats kept), from the allowed client address."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30, source_address=(CLIENT, 0))
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def _cf_mirror_env(stack: LocalPlatform, listen: str) -> dict[str, str]:
    """The production mirror manifest's env, with local values only where the platform differs."""
    assert stack.settings.storage is not None
    manifests = render_cf_manifests(PRODUCTION, CF_RULES, s3=S3Location(
        bucket=stack.settings.storage.bucket, region=stack.settings.storage.region))
    secrets = stack.mirror_secret_env(LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False))
    return {**manifests.mirror_env,
            "REGISTRY_STORAGE_S3_REGIONENDPOINT": f"http://{stack.local.address}:{stack.local.s3_port}",
            "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true", "REGISTRY_STORAGE_S3_SECURE": "false",
            "REGISTRY_PROXY_REMOTEURL": stack.hub_url,
            "REGISTRY_PROXY_USERNAME": stack.settings.upstream.username or "",
            "REGISTRY_HTTP_ADDR": listen, "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{free_port()}", **secrets}


@pytest.fixture(scope="module")
def cf_endpoint(stack: LocalPlatform) -> Iterator[Endpoint]:
    """The CF rendering (buildpack-templated, behind load balancer, gorouter and Envoy stand-ins) in front
    of the mirror app: the registry release production pins, started from its manifest's env."""
    port = free_port(MIRROR_CONTAINER)
    config = stack.paths.config / "cf-mirror-app.yml"
    # The registry:3 image's own default config, which the manifest's variables override.
    config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {"rootdirectory": "/unused"}},
                                      "http": {"addr": ":5000"}}))
    log = stack.paths.logs / "cf-mirror-app.log"
    record: ProcessRecord = start_process(
        "cf-mirror-app", [str(mirror_registry_binary(PRODUCTION.registry.version)), "serve", str(config)], log=log,
        env=daemon_env(_cf_mirror_env(stack, f"{MIRROR_CONTAINER}:{port}")))
    try:
        wait_until(lambda: _answers(f"http://{MIRROR_CONTAINER}:{port}/v2/"), timeout=30, what="the CF mirror app")
        conf = render_cf_manifests(PRODUCTION, CF_RULES, s3=S3Location("unused", "unused")).proxy_nginx_conf
        # The app port of the mirror is 5000 on CF; here a free one.
        conf = conf.replace(":5000;", f":{port};")
        with cf_edge(conf, env={"MIRROR_ROUTE": MIRROR_CONTAINER}) as edge:
            yield Endpoint("cf", "127.0.0.1", edge.public)
    finally:
        stop_process(record)
    assert not record.alive()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(params=["local", "cf"])
def endpoint(request: pytest.FixtureRequest, stack: LocalPlatform) -> Endpoint:
    if request.param == "local":
        host, port = stack.endpoint.rsplit(":", 1)
        return Endpoint("local", host, int(port))
    return request.getfixturevalue("cf_endpoint")


def _fresh_multiarch(stack: LocalPlatform, name: str) -> BuiltImage:
    """A multi-arch image no other test has pulled, so nothing but this test primes its tag."""
    image = SampleImage(f"library/{name}", "latest", platforms=("linux/amd64", "linux/arm64"))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    return build_image(image)


def _amd64(built: BuiltImage) -> str:
    return next(m.digest for m in built.platform_manifests if m.platform == "linux/amd64")


def test_later_accept_lines_cannot_be_forged_by_a_client_with_the_same_first_line(
        stack: LocalPlatform, endpoint: Endpoint) -> None:
    """nginx 1.22 shows only the first Accept line in $http_accept: a client sending skopeo's User-Agent
    and first line without the list types used to choose what every skopeo received."""
    built = _fresh_multiarch(stack, f"poison-lines-{endpoint.rendering}")
    path = f"/v2/{built.repository}/manifests/latest"
    attacker = [("User-Agent", SKOPEO_UA), ("Accept", OCI_MANIFEST), ("Accept", DOCKER_MANIFEST)]
    status, headers, _ = endpoint.ask(path, attacker)
    assert (status, headers["docker-content-digest"]) == (200, _amd64(built))  # its own answer

    victim = [("User-Agent", SKOPEO_UA), *(("Accept", t) for t in SKOPEO_ACCEPT)]
    for cache in ("MISS", "HIT"):  # its own answer, then that answer from the cache
        status, headers, body = endpoint.ask(path, victim)
        assert status == 200
        assert (headers["content-type"], headers["docker-content-digest"]) == (DOCKER_LIST, built.digest)
        assert headers["x-mirror-cache"] == cache
    assert json.loads(body)["mediaType"] == DOCKER_LIST

    # The real client, asking for the other platform after the attacker primed the tag again.
    endpoint.ask(path, attacker)
    inspected = subprocess.run(["skopeo", "--override-arch", "arm64", "inspect", "--tls-verify=false",
                                f"docker://{endpoint.host}:{endpoint.port}/{built.repository}:latest"],
                               capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr[-500:]
    # skopeo names the digest of what the tag resolved to: the list, from which it chose arm64.
    seen = json.loads(inspected.stdout)
    assert (seen["Architecture"], seen["Digest"]) == ("arm64", built.digest)


def test_a_user_agent_cannot_carry_accept_types_into_another_clients_key(
        stack: LocalPlatform, endpoint: Endpoint) -> None:
    """`$http_user_agent $http_accept` had no boundary: a User-Agent ending in the list types plus an
    Accept without them made the key of a victim whose Accept lists them first."""
    built = _fresh_multiarch(stack, f"poison-boundary-{endpoint.rendering}")
    path = f"/v2/{built.repository}/manifests/latest"
    attacker = [("User-Agent", f"containerd/2.0 {OCI_INDEX}, {DOCKER_LIST},"),
                ("Accept", f"{OCI_MANIFEST}, {DOCKER_MANIFEST}")]
    status, headers, _ = endpoint.ask(path, attacker)
    assert (status, headers["docker-content-digest"]) == (200, _amd64(built))

    victim = [("User-Agent", "containerd/2.0"), ("Accept", f"{OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST}, {DOCKER_MANIFEST}")]
    for method in ("GET", "HEAD"):
        status, headers, _ = endpoint.ask(path, victim, method=method)
        assert (status, headers["content-type"], headers["docker-content-digest"]) == (200, DOCKER_LIST, built.digest)
