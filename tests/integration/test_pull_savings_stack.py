"""pull_savings.ipynb on the local stack: known requests in, the same counts out, with the Docker Hub
stand-in's own log as ground truth for what reached upstream."""
from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from registry_mirror.access_logs import log_size, read_registry_log, upstream_manifest_gets
from registry_mirror.checks.client import MANIFEST_ACCEPT
from registry_mirror.local_components import hub_seeder
from registry_mirror.local_platform import LocalPlatform
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.support import client, settings_as_parameters

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_notebook_reports_exactly_the_pulls_made(stack: LocalPlatform, tmp_path: Path) -> None:
    image = SampleImage(f"library/savings-{secrets.token_hex(4)}", "1", layer_sizes=(4096,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    proxy_log, hub_log = stack.paths.logs / "proxy.access.log", stack.paths.logs / "hub.log"
    proxy_at, hub_at = log_size(proxy_log), log_size(hub_log)
    url = f"http://{stack.endpoint}/v2/{image.repository}/manifests"
    allowed = client("127.0.0.10")
    first = allowed.get(f"{url}/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
    assert first.status_code == 200
    assert allowed.get(f"{url}/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30).status_code == 200
    digest = first.headers["Docker-Content-Digest"]
    assert allowed.get(f"{url}/{digest}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30).status_code == 200
    assert allowed.head(f"{url}/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30).status_code == 200
    assert client("127.0.0.66").get(f"http://{stack.endpoint}/v2/", timeout=30).status_code == 403
    assert allowed.post(f"http://{stack.endpoint}/v2/{image.repository}/blobs/uploads/", timeout=30).status_code == 405

    # Only this test's lines: the session's stack has served many others.
    with open(proxy_log, "rb") as f:
        f.seek(proxy_at)
        (tmp_path / "slice.log").write_bytes(f.read())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**settings_as_parameters(stack.settings), "log_sources": str(tmp_path / "slice.log"),
                                      "output_dir": str(tmp_path / "tables"), "raw_clients": True}))
    out = tmp_path / "pull_savings.ipynb"
    run = subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", "--no-progress-bar",
                          str(ROOT / "notebooks/pull_savings.ipynb"), str(out), "-f", str(params)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "tables" / "pull_savings_summary.csv").iloc[0]
    assert (summary["pulls_served"], summary["pulls_by_tag"], summary["pulls_by_digest"]) == (3, 2, 1)
    assert (summary["version_checks"], summary["denied"], summary["writes_refused"]) == (1, 1, 1)
    # Ground truth: the Docker Hub stand-in saw one manifest GET for this image; the estimate is an upper bound.
    hub = read_registry_log(hub_log, offset=hub_at)
    fetched = len(upstream_manifest_gets(hub[hub["uri"].str.contains(image.repository, regex=False)]))
    assert fetched == 1 and fetched <= summary["pulls_upstream_at_most"] <= 2
    clients = pd.read_csv(tmp_path / "tables" / "pull_savings_clients.csv").set_index("client")
    assert clients.loc["127.0.0.10", "pulls"] == 3 and clients.loc["127.0.0.66", "denied"] == 1
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
    assert "The mirror served 3 pulls" in text
