"""blob-fanout's own Go tests (lib/blob-fanout/fanout_test.go: one fill shared by late readers, a broken
fill aborting every reader, a leaving client not stopping it, ranges and HEADs passed through, a 502
when the mirror cannot be reached), run with the toolchain a deploy builds it
with."""
from __future__ import annotations

import subprocess

from registry_mirror.blob_fanout import SOURCE, go_command


def test_blob_fanout_passes_its_go_tests() -> None:
    go, env = go_command()
    result = subprocess.run([go, "test", "-count=1", "."], cwd=SOURCE, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.startswith("ok"), result.stdout
