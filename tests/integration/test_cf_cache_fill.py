"""The cache fills on Cloud Foundry too: a blob pulled once through the CF rendering is in S3 afterwards,
and the next pull that reaches the mirror app (another proxy instance's cache miss: each instance keeps
its own) makes no upstream GET.

On CF the proxy reaches the mirror route by a variable host with no keepalive, so nginx closes the
connection right after the body. registry 3.0.0 then cancels its S3 upload of the blob it just served
(`upload part: RequestCanceled`), fixed upstream in distribution e0bac4837 (first in v3.1.0). The local
rendering hides it: it keeps connections to the mirrors alive.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from registry_mirror.access_logs import log_size, read_registry_log
from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.processes import wait_until
from registry_mirror.s3_clients import s3_client
from registry_mirror.sample_images import SampleImage, build_image, seed_registry
from tests.integration.cf_mirror_app import CLIENT, CfChain, cf_chain
from tests.support import client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chain(stack: LocalPlatform) -> Iterator[CfChain]:
    with cf_chain(stack) as started:
        yield started


def _in_s3(stack: LocalPlatform, digest: str) -> bool:
    assert stack.settings.storage is not None
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    s3 = s3_client(endpoint=stack.configs.s3_endpoint, access_key=secrets.s3_access_key.reveal(),
                   secret_key=secrets.s3_secret_key.reveal())
    hexdigest = digest.removeprefix("sha256:")
    key = f"docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
    try:
        s3.head_object(Bucket=stack.settings.storage.bucket, Key=key)
        return True
    except Exception:  # noqa: BLE001 - absent (404) or not yet written
        return False


# Fails on registry 3.0.0: it cancels the S3 upload of a blob when the proxy closes the connection
# after the body (distribution e0bac4837, fixed in 3.1.0), which the CF rendering always does.
def test_a_blob_pulled_once_through_cf_is_stored_and_not_fetched_again(stack: LocalPlatform, chain: CfChain) -> None:
    # Big enough to need a multipart upload, which 3.0.0 loses every time (small ones only sometimes).
    image = SampleImage("library/cf-fill", "latest", layer_sizes=(16 * 1024 * 1024,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    built = build_image(image)
    layer = built.platform_manifests[0].layer_digests[0]
    path = f"/v2/{image.repository}/blobs/{layer}"
    hub_log = str(stack.paths.logs / "hub.log")
    before = log_size(hub_log)

    first = client(CLIENT).get(f"http://127.0.0.1:{chain.public}{path}", timeout=60)
    assert (first.status_code, len(first.content)) == (200, len(built.blobs[layer]))
    wait_until(lambda: _in_s3(stack, layer), timeout=3, what="the blob in S3 after the pull through CF")
    # What the next proxy instance's cache miss does: ask the mirror app.
    second = requests.get(f"{chain.mirror_url}{path}", timeout=60)
    assert second.status_code == 200 and second.content == built.blobs[layer]
    upstream = read_registry_log(hub_log, offset=before)
    gets = upstream[(upstream["method"] == "GET") & (upstream["uri"] == path)]
    assert len(gets) == 1, gets.to_string()
