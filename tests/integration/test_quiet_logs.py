"""An operator's logs hold only what means something: the running mirrors are told not to export traces
(registry 3.x logs a failed export to localhost:4318 every 10 s per instance otherwise), and the proxy's
nginx started without a warning (two proxy_next_upstream lines made it warn `duplicate value`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from registry_mirror.platforms.local import LocalPlatform

pytestmark = pytest.mark.integration


def test_every_running_mirror_exports_no_traces_and_the_proxy_started_without_warnings(stack: LocalPlatform) -> None:
    mirrors = {n: r for n, r in stack.running_processes().items() if n.startswith("mirror-")}
    assert mirrors
    for name, record in mirrors.items():
        environ = Path(f"/proc/{record.pid}/environ").read_bytes().split(b"\0")
        assert b"OTEL_TRACES_EXPORTER=none" in environ, name
        assert "traces export" not in Path(record.log).read_text(errors="replace"), name
    for log in ("proxy.error.log", "proxy.stderr.log"):
        path = stack.paths.logs / log
        text = path.read_text(errors="replace") if path.exists() else ""
        assert "duplicate value" not in text and "[warn]" not in text, text[-1000:]
