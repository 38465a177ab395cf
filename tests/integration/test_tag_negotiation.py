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

import json
import subprocess

import pytest

from registry_mirror.go_tools import built_tool
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.sample_images import BuiltImage, SampleImage, build_image, seed_registry
from tests.integration.endpoints import Endpoint

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# What skopeo 1.9.3 (containers/image) sends for a manifest: one Accept line per type, seen on the wire.
SKOPEO_UA = "skopeo/1.9.3"
SKOPEO_ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.v1+prettyjws",
                 "application/vnd.docker.distribution.manifest.v1+json", DOCKER_LIST, OCI_INDEX]


def _fresh_multiarch(stack: LocalPlatform, name: str) -> BuiltImage:
    """A multi-arch image no other test has pulled, so nothing but this test primes its tag."""
    image = SampleImage(f"library/{name}", "latest", platforms=("linux/amd64", "linux/arm64"))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    return build_image(image)


def _amd64(built: BuiltImage) -> str:
    return _child(built, "linux/amd64")


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
    assert _crane_digest(endpoint, built, "linux/arm64") == _child(built, "linux/arm64")


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
    # crane sends its types on one line: it too gets the list, and picks arm64 from it.
    assert _crane_digest(endpoint, built, "linux/arm64") == _child(built, "linux/arm64")


def _child(built: BuiltImage, platform: str) -> str:
    return next(m.digest for m in built.platform_manifests if m.platform == platform)


def _crane_digest(endpoint: Endpoint, built: BuiltImage, platform: str) -> str:
    crane = built_tool("crane")
    assert crane is not None, "crane is not built: run `make bootstrap`"
    run = subprocess.run([crane.binary, "digest", "--insecure", "--platform", platform,
                          f"{endpoint.host}:{endpoint.port}/{built.repository}:latest"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-500:]
    return run.stdout.strip()


def test_a_client_that_reads_only_oci_types_gets_a_docker_list_as_stored(stack: LocalPlatform, endpoint: Endpoint) -> None:
    """The registry answers 400 to a client whose Accept names neither Docker type when the tag holds a
    Docker manifest list (the OCI conformance suite is such a client). It reads indexes, so the proxy
    hands it the list as stored, digest unchanged, on one Accept line or several; the registry's own
    answers to other clients stay theirs, before and after."""
    built = _fresh_multiarch(stack, f"oci-only-{endpoint.rendering}")
    path = f"/v2/{built.repository}/manifests/latest"
    docker_only = [("Accept", DOCKER_MANIFEST)]
    status, headers, _ = endpoint.ask(path, docker_only)
    assert (status, headers["docker-content-digest"]) == (200, _amd64(built))

    for oci_only in ([("Accept", OCI_INDEX), ("Accept", OCI_MANIFEST)], [("Accept", f"{OCI_MANIFEST}, {OCI_INDEX}")]):
        for method in ("GET", "HEAD", "GET"):
            status, headers, body = endpoint.ask(path, oci_only, method=method)
            assert (status, headers["content-type"], headers["docker-content-digest"]) == (200, DOCKER_LIST, built.digest)
        assert body == built.manifest

    for method in ("GET", "HEAD"):
        status, headers, _ = endpoint.ask(path, docker_only, method=method)
        assert (status, headers["docker-content-digest"]) == (200, _amd64(built))
    status, headers, _ = endpoint.ask(path, [("Accept", OCI_INDEX)], method="HEAD")
    assert (status, headers["docker-content-digest"]) == (200, built.digest)
