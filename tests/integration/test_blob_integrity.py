"""A layer whose stored bytes are not the digest it is asked by: the registry serves S3's copy without
checking it, so the proxy must neither hand it out as whole nor keep it in its cache (where it would
stay 30 days). blob-fanout checks the bytes against the digest and cuts every answer on a mismatch."""
from __future__ import annotations

import pytest
import requests

from registry_mirror.credentials import LocalStackSecrets
from registry_mirror.http_clients import client_from
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.processes import wait_until
from registry_mirror.s3_clients import s3_client
from registry_mirror.sample_images import SampleImage, build_image, seed_registry
from registry_mirror.unix_http import unix_request
from tests.integration.cf_mirror_app import CLIENT

pytestmark = pytest.mark.integration

SIZE = 300_000


def test_a_layer_stored_wrong_is_never_served_whole_nor_cached(shared_stack: LocalPlatform) -> None:
    stack = shared_stack
    assert stack.settings.storage is not None
    image = SampleImage("library/stored-wrong", "latest", layer_sizes=(SIZE,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    layer = build_image(image).platform_manifests[0].layer_digests[0]
    path = f"/v2/{image.repository}/blobs/{layer}"
    # One mirror instance fetches and stores it; the proxy's cache stays cold.
    assert unix_request(str(stack.mirror_sockets()[0]), "GET", path, timeout=30).status == 200
    secrets = LocalStackSecrets.load_or_create(stack.paths.secrets_file, create=False)
    s3 = s3_client(endpoint=stack.configs.s3_endpoint, access_key=secrets.s3_access_key.reveal(),
                   secret_key=secrets.s3_secret_key.reveal())
    hexdigest = layer.removeprefix("sha256:")
    key = f"{stack.settings.storage.root_directory.strip('/')}/docker/registry/v2/blobs/sha256/{hexdigest[:2]}/" \
          f"{hexdigest}/data".lstrip("/")
    bucket = stack.settings.storage.bucket

    def stored_length() -> int:
        try:
            return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except s3.exceptions.ClientError:
            return 0
    length = wait_until(stored_length, timeout=30, what="the layer in S3")
    # Same length, other bytes: what a bad disk or a bad copy leaves.
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(length))

    for attempt in range(2):
        with client_from(CLIENT).get(f"http://{stack.endpoint}{path}", stream=True, timeout=30) as resp:
            assert resp.status_code == 200 and resp.headers.get("X-Mirror-Cache") != "HIT", attempt
            with pytest.raises(requests.exceptions.RequestException):
                received = sum(len(chunk) for chunk in resp.iter_content(65536))
                pytest.fail(f"attempt {attempt}: {received} of {length} bytes arrived as a whole answer")
