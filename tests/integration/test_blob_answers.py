"""Answers through the public endpoint: a blob's byte ranges from the proxy's cache (on the first fill and
on hits), and HEAD agreeing with GET on every header a client compares, for blobs and manifests, cold
and warm. Blobs on both renderings (the CF one behind the edge stand-ins: tests/integration/cf_mirror_app.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.sample_images import SampleImage, build_image, seed_registry
from tests.integration.cf_mirror_app import cf_chain
from tests.support import MANIFEST_TYPES, client

pytestmark = pytest.mark.integration

ALLOWED = "127.0.0.10"
COMPARED = ("Content-Type", "Content-Length", "Docker-Content-Digest", "ETag", "Accept-Ranges")


@pytest.fixture(scope="module")
def cf_public(stack: LocalPlatform) -> Iterator[str]:
    with cf_chain(stack) as chain:
        yield f"127.0.0.1:{chain.public}"


@pytest.fixture(params=["local", "cf"])
def endpoint(request: pytest.FixtureRequest, stack: LocalPlatform) -> tuple[str, str]:
    """(rendering, host:port of the public endpoint)"""
    if request.param == "local":
        return "local", stack.endpoint
    return "cf", request.getfixturevalue("cf_public")


def _fresh_layer(stack: LocalPlatform, endpoint: tuple[str, str], name: str, size: int) -> tuple[str, bytes]:
    """A layer no other test has pulled, so its first request here is the mirror's first fetch."""
    image = SampleImage(f"library/{name}-{endpoint[0]}", "latest", layer_sizes=(size,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    built = build_image(image)
    digest = built.platform_manifests[0].layer_digests[0]
    return f"http://{endpoint[1]}/v2/{image.repository}/blobs/{digest}", built.blobs[digest]


def test_ranges_are_served_from_the_first_fill_and_from_hits(stack: LocalPlatform, endpoint: tuple[str, str]) -> None:
    """A resumed download must not restart from byte 0: nginx kept the first fill's answer, which had
    no Accept-Ranges, and served every later Range request a full 200 from it."""
    url, blob = _fresh_layer(stack, endpoint, "ranges", 256 * 1024)
    session = client(ALLOWED)
    for cache, (start, end) in (("MISS", (100, 4195)), ("HIT", (200_000, len(blob) - 1))):
        resp = session.get(url, headers={"Range": f"bytes={start}-{end}"}, timeout=30)
        assert (resp.status_code, resp.headers["X-Mirror-Cache"]) == (206, cache)
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(blob)}"
        assert resp.content == blob[start:end + 1]
    suffix = session.get(url, headers={"Range": "bytes=-10"}, timeout=30)
    assert (suffix.status_code, suffix.content) == (206, blob[-10:])
    beyond = session.get(url, headers={"Range": f"bytes={len(blob)}-"}, timeout=30)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(blob)}"


def test_head_and_get_agree_on_every_compared_header_cold_and_warm(stack: LocalPlatform,
                                                                    endpoint: tuple[str, str]) -> None:
    url, blob = _fresh_layer(stack, endpoint, "head-get", 32 * 1024)
    session = client(ALLOWED)
    answers = []
    for method in ("HEAD", "GET", "HEAD", "GET"):  # cold HEAD, first fill, then both warm
        resp = session.request(method, url, timeout=30)
        assert resp.status_code == 200, (method, resp.status_code)
        answers.append((method, {h: resp.headers.get(h) for h in COMPARED}))
    first = answers[0][1]
    assert first["Content-Length"] == str(len(blob)) and first["Accept-Ranges"] == "bytes"
    assert first["ETag"] == f'"{first["Docker-Content-Digest"]}"'
    assert [a for a in answers if a[1] != first] == [], answers


def test_head_and_get_agree_for_manifests_by_tag_and_by_digest(stack: LocalPlatform) -> None:
    image = SampleImage("library/head-get-manifest", "latest", layer_sizes=(1024,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    built = build_image(image)
    session = client(ALLOWED)
    for reference in ("latest", built.digest):
        url = f"http://{stack.endpoint}/v2/{image.repository}/manifests/{reference}"
        answers = []
        for method in ("HEAD", "GET", "HEAD", "GET"):
            resp = session.request(method, url, headers={"Accept": MANIFEST_TYPES}, timeout=30)
            assert resp.status_code == 200, (method, resp.status_code)
            answers.append((method, {h: resp.headers.get(h) for h in COMPARED}))
        first = answers[0][1]
        assert first["Docker-Content-Digest"] == built.digest and first["ETag"] == f'"{built.digest}"'
        assert first["Content-Length"] == str(len(built.manifest))
        assert [a for a in answers if a[1] != first] == [], (reference, answers)
