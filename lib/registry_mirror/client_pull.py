"""Pull an image the way a user does: skopeo resolving `docker.io/...` through a registries.conf
mirror entry that points at the public endpoint."""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import VerificationError

_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


@dataclass(frozen=True)
class PullResult:
    image: str
    digest: str
    layers: int
    bytes: int
    seconds: float
    note: str = ""  # what else the operator must know, e.g. that S3 is down and the cache served it

    def verdict(self) -> str:
        pulled = f"PULLED {self.image} ({self.layers} layer(s), {self.bytes} bytes) in {self.seconds:.2f} s"
        return f"{pulled}; {self.note}" if self.note else pulled


def pull_with_skopeo(image: str, *, registries_conf: str, destination: Path | None = None,
                     timeout: float = 300, arch: str | None = None) -> PullResult:
    """Copy `image` (e.g. docker.io/library/hello:latest) to an OCI layout; VerificationError on failure."""
    with tempfile.TemporaryDirectory(prefix="skopeo-") as tmp:
        work = Path(tmp)
        conf = work / "registries.conf"
        conf.write_text(registries_conf)
        policy = work / "policy.json"
        policy.write_text(json.dumps(_POLICY))
        target = destination or work / "image"
        argv = ["skopeo", "--registries-conf", str(conf), "--policy", str(policy)]
        if arch:
            argv += ["--override-arch", arch]
        argv += ["copy", "--retry-times", "0", f"docker://{image}", f"oci:{target}:pulled"]
        start = time.monotonic()
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                    env={"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp})
        except subprocess.TimeoutExpired:
            raise VerificationError(f"skopeo could not pull {image} within {timeout:.0f} s") from None
        seconds = time.monotonic() - start
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
            raise VerificationError(f"skopeo could not pull {image}: {message[-400:]}")
        index = json.loads((target / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"]
        manifest = json.loads((target / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_text())
        layers = manifest.get("layers", [])
        size = sum(int(layer.get("size", 0)) for layer in layers)
        return PullResult(image=image, digest=manifest_digest, layers=len(layers), bytes=size, seconds=seconds)
