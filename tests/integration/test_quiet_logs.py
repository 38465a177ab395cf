"""An operator's logs hold only what means something: the running mirrors are told not to export traces
(registry 3.x logs a failed export to localhost:4318 every 10 s per instance otherwise), and the proxy's
nginx started without a warning (two proxy_next_upstream lines made it warn `duplicate value`)."""
from __future__ import annotations

import re
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
    # nginx writes what it finds while reading its config to the -e log, later to its error log.
    for path in (stack.paths.nginx_prefix("proxy") / "startup.error.log", stack.paths.logs / "proxy.error.log",
                 stack.paths.logs / "proxy.stderr.log"):
        text = path.read_text(errors="replace") if path.exists() else ""
        # Warnings about the config itself name its file and line; warnings about traffic (an instance a
        # test killed) are what an operator needs to read.
        config_warnings = [line for line in text.splitlines() if "[warn]" in line and re.search(r"\.conf:\d+$", line)]
        assert config_warnings == [] and "duplicate value" not in text, config_warnings
