"""The OCI distribution-spec conformance suite (pinned and built by bootstrap: go_tools.py), run read-only
against a registry endpoint, and the samples it reads.

`make test` runs it against the local stack's public endpoint (tests/integration/test_oci_conformance.py);
bench/conformance.py against the endpoint and a bare registry side by side.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import PreflightError
from .go_tools import built_tool
from .sample_images import SampleImage, build_image

SUITE = "OCI Conformance Test"
# What the suite reads, one repository each: Docker and OCI formats, a list and an index, several tags.
SAMPLES: dict[str, tuple[SampleImage, ...]] = {
    "docker-image-several-tags": tuple(SampleImage("library/conformance-tags", t) for t in ("1.0", "1.1", "2.0", "latest")),
    "docker-manifest-list": (SampleImage("library/conformance-list", "latest", platforms=("linux/amd64", "linux/arm64")),),
    "oci-image": (SampleImage("library/conformance-oci", "latest", oci=True),),
    "oci-image-index": (SampleImage("library/conformance-oci-index", "latest", platforms=("linux/amd64", "linux/arm64"),
                                    oci=True),),
}
_RESULT_LINE = re.compile(rf"^\s*({SUITE}(?:/\S.*)?): (Pass|FAIL|Error|Skip|Disabled)$")


def run_conformance(registry: str, images: Sequence[SampleImage], results: Path, *,
                    timeout: float = 120) -> tuple[dict[str, str], str]:
    """Run the suite read-only against `registry` (host:port, plain http) over these images of one
    repository; returns each leaf test's status by name, and the suite's report."""
    build = built_tool("conformance")
    if build is None:
        raise PreflightError("the OCI conformance suite is not built: run `make bootstrap`")
    built = [build_image(image) for image in images]
    manifests = [b.digest for b in built] + [m.digest for b in built if len(b.platform_manifests) > 1
                                            for m in b.platform_manifests]
    blobs = sorted({d for b in built for m in b.platform_manifests for d in (m.config_digest, *m.layer_digests)})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(results),
           "OCI_REGISTRY": registry, "OCI_TLS": "disabled", "OCI_RESULTS_DIR": str(results),
           "OCI_REPO1": images[0].repository, "OCI_REPO2": images[0].repository,
           # Read-only: a pull-through mirror refuses writes, so the suite reads what upstream holds.
           "OCI_API_PUSH": "false", "OCI_API_BLOBS_DELETE": "false", "OCI_API_MANIFESTS_DELETE": "false",
           "OCI_API_TAGS_DELETE": "false",
           # The proxy answers the referrers API from the referrers tag schema (see its nginx template);
           # every manifest is a subject to list.
           "OCI_API_REFERRER": "true", "OCI_RO_DATA_REFERRERS": " ".join(manifests),
           "OCI_RO_DATA_TAGS": " ".join(i.tag for i in images), "OCI_RO_DATA_MANIFESTS": " ".join(manifests),
           "OCI_RO_DATA_BLOBS": " ".join(blobs)}
    run = subprocess.run([build.binary], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    outcome = {m.group(1): m.group(2) for line in run.stdout.splitlines() if (m := _RESULT_LINE.match(line))}
    leaves = {name: status for name, status in outcome.items()
              if not any(other.startswith(name + "/") for other in outcome)}
    return leaves, run.stdout
