"""pull_savings.ipynb and cache_usage.ipynb on the local stack: known requests in, the same counts out,
with the Docker Hub stand-in's own log as ground truth for what reached upstream.

The scenarios call what the notebooks' cells call, in-process; both notebooks run under papermill in
the analyse task below, as the pipeline runs them, with their outputs checked for secrets.
"""
from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from registry_mirror.access_logs import log_size, read_registry_log, upstream_manifest_gets
from registry_mirror.checks.client import MANIFEST_ACCEPT, pull_over_api
from registry_mirror.parameters import resolve_project_path, runbook_parameters
from registry_mirror.platforms.local.hub_stand_in import hub_seeder
from registry_mirror.platforms.local import LocalPlatform
from registry_mirror.processes import wait_until
from registry_mirror.sample_images import SampleImage, seed_registry
from tests.support import client, first_screen, settings_as_parameters

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_notebook_reports_exactly_the_pulls_made(stack: LocalPlatform, tmp_path: Path) -> None:
    image = SampleImage(f"library/savings-{secrets.token_hex(4)}", "1", layer_sizes=(4096,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    proxy_log, hub_log = stack.paths.logs / "proxy.access.log", stack.paths.logs / "hub.log"
    proxy_at, hub_at = log_size(proxy_log), log_size(hub_log)
    mirror_at = {log: log_size(log) for log in stack.paths.logs.glob("mirror-*.log")}
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

    # nginx logs a request after its response went out: wait for the last one's line before reading.
    wait_until(lambda: f"POST /v2/{image.repository}/blobs/uploads/".encode() in _tail(proxy_log, proxy_at),
               timeout=10, what="the proxy's line for the refused write")
    # Only this test's lines: the session's stack has served many others.
    _slice(proxy_log, proxy_at, tmp_path / "slice.log")
    (tmp_path / "mirrors").mkdir()
    for log, at in mirror_at.items():
        _slice(log, at, tmp_path / "mirrors" / log.name)
    text = pull_savings_cells(stack, log_sources=str(tmp_path / "slice.log"), mirror_logs=str(tmp_path / "mirrors"),
                              output_dir=str(tmp_path / "tables"), raw_clients=True)
    summary = pd.read_csv(tmp_path / "tables" / "pull_savings_summary.csv").iloc[0]
    assert (summary["pulls_served"], summary["pulls_by_tag"], summary["pulls_by_digest"]) == (3, 2, 1)
    assert (summary["version_checks"], summary["denied"], summary["writes_refused"]) == (1, 1, 1)
    # Ground truth: the Docker Hub stand-in saw one manifest GET for this image. The proxy's log gives an
    # upper bound; the mirrors' logs give the exact count.
    hub = read_registry_log(hub_log, offset=hub_at)
    fetched = len(upstream_manifest_gets(hub[hub["uri"].str.contains(image.repository, regex=False)]))
    assert fetched == 1 and fetched <= summary["pulls_upstream_at_most"] <= 2
    assert summary["pulls_upstream"] == fetched
    clients = pd.read_csv(tmp_path / "tables" / "pull_savings_clients.csv").set_index("client")
    assert clients.loc["127.0.0.10", "pulls"] == 3 and clients.loc["127.0.0.66", "denied"] == 1
    assert "The mirror served 3 pulls; 1 reached Docker Hub (the mirrors' logs), so it saved 2" in text


def pull_savings_cells(stack: LocalPlatform, **values: object) -> str:
    """pull_savings.ipynb's cells, in-process, with the stack's settings and these options over the
    notebook's defaults; returns what the cells print."""
    from registry_mirror.analysis.mirror_logs import upstream_fetches
    from registry_mirror.analysis.pull_savings import log_sources, pull_savings
    from registry_mirror.checks.upstream import docker_hub_limit

    defaults: dict[str, object] = {"log_sources": "", "mirror_logs": "", "mirror_metrics": "", "limit_per_window": 0,
                                   "window_hours": 6, "raw_clients": False, "output_dir": ".out/pull-savings"}
    settings, options = runbook_parameters({**settings_as_parameters(stack.settings), **defaults, **values},
                                           notebook="pull_savings.ipynb",
                                           options={k: type(v) for k, v in defaults.items()})
    limit = options["limit_per_window"] or docker_hub_limit(settings)
    upstream = upstream_fetches(settings, options["mirror_logs"], options["mirror_metrics"],
                                log_sources=options["log_sources"])
    savings = pull_savings(log_sources(settings, options["log_sources"]), rules=settings.load_security_rules(),
                           limit=limit, window_hours=options["window_hours"], raw_clients=options["raw_clients"],
                           upstream=upstream)
    printed = [str(savings.load.summary()), str(upstream.summary()) if upstream else "no mirror logs or counters",
               savings.verdict()]
    printed += [str(path) for path in savings.write(resolve_project_path(options["output_dir"]))]
    return "\n".join(printed)


def _slice(log: Path, offset: int, to: Path) -> None:
    to.write_bytes(_tail(log, offset))


def _tail(log: Path, offset: int) -> bytes:
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read()


def test_cache_usage_inventories_the_stacks_bucket(stack: LocalPlatform, tmp_path: Path) -> None:
    from registry_mirror.analysis.cache_history import read_history
    from registry_mirror.analysis.cache_inventory import inventory, open_cache, take_inventory

    image = SampleImage(f"library/usage-{secrets.token_hex(4)}", "1", layer_sizes=(123_457,))
    seed_registry(stack.hub_url, hub_seeder(stack.paths.secrets), [image])
    pulled = pull_over_api(f"http://{stack.endpoint}", client("127.0.0.10"), image.repository, image.tag)
    cache = open_cache(stack.settings)
    assert "secret" not in repr(cache).lower()
    inv = inventory(cache.listing, cache.root, read=cache.read, progress=False)
    repos = inv.repositories().set_index("repository")
    # The registry stores a pulled image's manifest, config and layer: the layer's bytes are in its size.
    assert image.repository in repos.index
    assert repos.loc[image.repository, "logical_bytes"] >= 123_457
    assert pulled.bytes <= repos.loc[image.repository, "logical_bytes"] + 10_000
    assert inv.summary().iloc[0]["blobs"] >= 3
    # Listed per repository (delimiter listings find them): the same objects.
    walked = take_inventory(cache, progress=False)
    assert sorted(walked.objects["key"]) == sorted(inv.objects["key"])

    # The growth history lives in the bucket: this run adds one row to what earlier runs left there.
    before = read_history(cache)
    printed = cache_usage_cells(stack, output_dir=str(tmp_path / "usage"), quota_gb=10.0)
    summary = pd.read_csv(tmp_path / "usage" / "cache_summary.csv").iloc[0]
    assert summary["repositories"] >= 1
    after = read_history(cache)
    assert len(after) == len(before) + 1 and after["bytes"].iloc[-1] == summary["bytes"]
    assert len(pd.read_csv(tmp_path / "usage" / "cache_history.csv")) == len(after)  # the build's copy
    secrets_file = stack.paths.secrets_file.read_text()
    assert not any(value in printed for value in _secret_values(secrets_file))


def cache_usage_cells(stack: LocalPlatform, **values: object) -> str:
    """cache_usage.ipynb's cells, in-process, with the stack's settings and these options over the
    notebook's defaults; returns what the cells show (the cache's repr, the verdict, the files)."""
    from registry_mirror.analysis.cache_history import record_history
    from registry_mirror.analysis.cache_inventory import open_cache, take_inventory, write

    defaults: dict[str, object] = {"bucket": "", "s3_endpoint": "", "quota_gb": 0.0, "price_per_gb_month": 0.0,
                                   "currency": "USD",
                                   "inventory_report": "", "output_dir": ".out/cache-usage"}
    settings, options = runbook_parameters({**settings_as_parameters(stack.settings), **defaults, **values},
                                           notebook="cache_usage.ipynb",
                                           options={k: type(v) for k, v in defaults.items()})
    cache = open_cache(settings, bucket=options["bucket"], endpoint=options["s3_endpoint"])
    inv = take_inventory(cache, report=options["inventory_report"])
    printed = [repr(cache), inv.verdict(options["quota_gb"], options["price_per_gb_month"], options["currency"]),
               inv.summary().T.to_string(),
               inv.headroom(options["quota_gb"], options["price_per_gb_month"], options["currency"]).to_string()]
    history = record_history(cache, inv)
    printed += [str(path) for path in write(inv, resolve_project_path(options["output_dir"]), options["quota_gb"],
                                            options["price_per_gb_month"], options["currency"], history)]
    return "\n".join(printed)


def _secret_values(text: str) -> list[str]:
    import json

    return [v for v in json.loads(text).values() if isinstance(v, str) and len(v) >= 12]


@pytest.mark.notebooks
def test_the_analyse_task_runs_green_against_the_stack(stack: LocalPlatform, tmp_path: Path) -> None:
    """ci/tasks/analyse as Concourse runs it: saved proxy logs and the bucket's keys in, reports out."""
    import json
    import os
    import shutil

    build = tmp_path / "build"
    (build / "proxy-logs").mkdir(parents=True)
    shutil.copy(stack.paths.logs / "proxy.access.log", build / "proxy-logs" / "proxy.log")
    (build / "security-rules").mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings_as_parameters(stack.settings)))
    keys = json.loads(stack.paths.secrets_file.read_text())
    assert stack.settings.storage is not None and stack.settings.local is not None
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "ENVIRONMENT": "staging",
           "PARAMS_FILE": str(params), "BUCKET": stack.settings.storage.bucket,
           "S3_ENDPOINT": f"http://{stack.settings.local.address}:{stack.settings.local.s3_port}",
           "AWS_ACCESS_KEY_ID": keys["s3_access_key"], "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"],
           "AWS_DEFAULT_REGION": stack.settings.storage.region}
    done = subprocess.run(["bash", str(ROOT / "ci/tasks/analyse/run.sh")], cwd=build, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = build / "notebooks"
    assert (out / "cache_usage.html").exists() and (out / "pull_savings.html").exists()
    html = (out / "pull_savings.html").read_text()
    assert "The mirror served" in html and "import registry_mirror" not in html  # no code, the verdict
    assert keys["s3_secret_key"] not in html + (out / "cache_usage.html").read_text()
    # The executed notebooks are the build's record: no secret of the stack in either.
    executed = [out / "cache_usage.ipynb", out / "pull_savings.ipynb"]
    assert all(path.exists() for path in executed)
    for path in executed:
        assert not any(value in path.read_text() for value in _secret_values(json.dumps(keys))), path.name
    # As a reader sees it: headless Chromium renders the report; the verdict and the plots are there.
    for name, verdict in (("pull_savings", "The mirror served"), ("cache_usage", "The cache holds")):
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={tmp_path / ('chromium-' + name)}", "--dump-dom",
                              (out / f"{name}.html").as_uri()], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-1500:]
        assert verdict in dom.stdout
        assert re.search(r'<img [^>]*src="data:image/png;base64,', dom.stdout), f"{name}: no plot in the page"
    # As an operator first sees each report: the verdict on the first screen, whole, plain numbers.
    assert "The mirror served" in first_screen(out / "pull_savings.ipynb", tmp_path / "screen")
    assert "The cache holds" in first_screen(out / "cache_usage.ipynb", tmp_path / "screen")
    # The run left its row in the bucket's history, where the next build's run finds it.
    from registry_mirror.analysis.cache_history import read_history
    from registry_mirror.analysis.cache_inventory import open_cache

    assert not read_history(open_cache(stack.settings)).empty
