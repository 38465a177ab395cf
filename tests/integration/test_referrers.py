"""The referrers API through the public endpoint, on both renderings (distribution-spec 1.1, "Listing
Referrers"). The registry has none, so the proxy answers from the referrers tag schema pulled through the
mirror: the artifacts a client attached upstream are listed, a subject without any gets an empty index
(never the 404 that means "no referrers API"), and a malformed subject gets 400."""
from __future__ import annotations

import hashlib
import json

import pytest

from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.sample_images import (
    OCI_INDEX,
    SampleImage,
    SampleReferrer,
    build_image,
    seed_referrers,
    seed_registry,
)
from tests.integration.endpoints import Endpoint

pytestmark = pytest.mark.integration

SIGNATURE = "application/vnd.example.signature.v1"
SBOM = "application/vnd.example.sbom.v1"


def _index(status: int, headers: dict[str, str], body: bytes) -> list[dict[str, object]]:
    assert (status, headers["content-type"]) == (200, OCI_INDEX), body[:300]
    index = json.loads(body)
    assert (index["schemaVersion"], index["mediaType"]) == (2, OCI_INDEX)
    manifests: list[dict[str, object]] = index["manifests"]
    return manifests


def test_attached_artifacts_are_listed_and_unfiltered_lists_say_so(stack: LocalPlatform, endpoint: Endpoint) -> None:
    subject = SampleImage(f"library/referred-{endpoint.rendering}", "latest", oci=True)
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [subject])
    built = seed_referrers(stack.hub_url, hub_seeder(stack.paths.secrets),
                           [SampleReferrer(subject, SIGNATURE, b"signature"), SampleReferrer(subject, SBOM, b"sbom")])
    path = f"/v2/{subject.repository}/referrers/{build_image(subject).digest}"
    wanted = [artifact.descriptor for artifact in built]

    # The client's Accept lines play no part; the second answer comes from the proxy's cache.
    for accept in ("application/vnd.docker.distribution.manifest.v2+json", OCI_INDEX):
        status, headers, body = endpoint.ask(path, [("Accept", accept)])
        assert _index(status, headers, body) == wanted
        # A listing, not a manifest to pin by digest.
        assert "docker-content-digest" not in headers
    # The tag schema holds no filter: the whole list, without OCI-Filters-Applied, and the client filters.
    status, headers, body = endpoint.ask(f"{path}?artifactType={SBOM}", [])
    assert _index(status, headers, body) == wanted
    assert "oci-filters-applied" not in headers
    status, headers, _ = endpoint.ask(path, [], method="HEAD")
    assert (status, headers["content-type"]) == (200, OCI_INDEX)


def test_a_subject_without_referrers_gets_an_empty_index(stack: LocalPlatform, endpoint: Endpoint) -> None:
    unknown = f"sha256:{hashlib.sha256(endpoint.rendering.encode()).hexdigest()}"
    sha512 = f"sha512:{hashlib.sha512(endpoint.rendering.encode()).hexdigest()}"
    for path in (f"/v2/library/hello/referrers/{unknown}", f"/v2/library/hello/referrers/{sha512}",
                 f"/v2/library/never-pulled-{endpoint.rendering}/referrers/{unknown}"):
        status, headers, body = endpoint.ask(path, [])
        assert _index(status, headers, body) == []
        assert "oci-filters-applied" not in headers
    # An empty list is filtered by any type.
    status, headers, body = endpoint.ask(f"/v2/library/hello/referrers/{unknown}?artifactType={SBOM}", [])
    assert _index(status, headers, body) == []
    assert headers["oci-filters-applied"] == "artifactType"


@pytest.mark.parametrize("subject", ["sha256:abc", "sha256:" + "A" * 64, "md5:" + "0" * 32, "latest",
                                     "sha512:" + "0" * 64, "sha256:" + "0" * 64 + "%2F..%2F"])
def test_a_malformed_subject_gets_400_digest_invalid(endpoint: Endpoint, subject: str) -> None:
    status, _, body = endpoint.ask(f"/v2/library/hello/referrers/{subject}", [])
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"


def test_a_proxy_that_cannot_reach_the_mirror_answers_an_error_not_an_empty_list(shared_stack: LocalPlatform) -> None:
    """An empty list means "nothing refers to it": an outage must not say that (a verifier would read it
    as "unsigned"). What was listed before is still served from the cache."""
    from registry_mirror.platforms.local import faults

    subject = SampleImage("library/referred-outage", "latest", oci=True)
    seed_registry(shared_stack.hub_url, hub_seeder(shared_stack.paths.secrets), [subject])
    built = seed_referrers(shared_stack.hub_url, hub_seeder(shared_stack.paths.secrets),
                           [SampleReferrer(subject, SIGNATURE)])
    host, port = shared_stack.endpoint.rsplit(":", 1)
    local = Endpoint("local", host, int(port))
    listed = f"/v2/{subject.repository}/referrers/{build_image(subject).digest}"
    assert _index(*local.ask(listed, [])) == [built[0].descriptor]

    faults.inject(shared_stack, "proxy-cannot-reach-mirror")
    try:
        never_listed = f"/v2/{subject.repository}/referrers/sha256:{hashlib.sha256(b'outage').hexdigest()}"
        status, _, body = local.ask(never_listed, [])
        assert status in (502, 503, 504), body[:300]
        assert _index(*local.ask(listed, [])) == [built[0].descriptor]
    finally:
        faults.undo(shared_stack)
