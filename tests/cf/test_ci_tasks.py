"""The pipeline's task scripts, run as Concourse runs them: from a build folder holding their inputs, with
the environment the pipeline gives them, against the CF API stand-in (and, for verify, the deployed
proxy behind the CF edge stand-ins)."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from tests.cf.conftest import CHECK_IMAGE, RULES, ROOT, CfRunner, public_route
from tests.fakes.cf_api import FakeCloudFoundry


def build_folder(runner: CfRunner, environment: str) -> tuple[Path, dict[str, str]]:
    """The task's working folder (inputs as subfolders) and its environment."""
    build = runner.tmp / f"build-{runner.count}"
    runner.count += 1
    (build / "security-rules").mkdir(parents=True)
    (build / "security-rules" / "security-rules.yaml").write_text(yaml.safe_dump(RULES))
    (build / "registry-image").mkdir()
    (build / "registry-image" / "digest").write_text(runner.hub.digest + "\n")
    params = runner.params(environment)
    params_file = build / "params-from-repo.yaml"
    params_file.write_text(yaml.safe_dump(params))
    env = {**runner.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "ENVIRONMENT": environment,
           "PARAMS_FILE": str(params_file), "BUILD_JOB_NAME": "test-job", "BUILD_NAME": str(runner.count)}
    return build, env


def run_task(task: str, build: Path, env: dict[str, str], **params: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "ci" / "tasks" / task / "run.sh")], cwd=build, env={**env, **params},
                          capture_output=True, text=True, timeout=600)


def test_deploy_verify_and_rollback_tasks_run_green(runner: CfRunner, cf: FakeCloudFoundry, mirror_app: str) -> None:
    build, env = build_folder(runner, "staging")
    for component in ("registry", "proxy"):
        done = run_task("deploy", build, env, COMPONENT=component)
        assert done.returncode == 0, done.stderr[-3000:]
    # The digest the pipeline handed the task is the one deployed.
    assert cf.app("docker-registry-mirror")["image"].endswith(runner.hub.digest)
    packed = sorted((build / "notebooks").glob("*.tgz"))
    assert packed and "./deploy.ipynb" in tarfile.open(packed[-1]).getnames()

    with public_route(cf, mirror_app) as edge:
        verified = run_task("verify", build, env, PUBLIC_URL=edge.public_url, CHECK_IMAGE=CHECK_IMAGE)
    assert verified.returncode == 0, verified.stderr[-3000:]
    results = yaml.safe_load((build / "notebooks" / "policy-results.json").read_text())
    assert results["ok"] is True

    # A second registry deploy with a change, then the rollback task puts the first one back.
    first = cf.app("docker-registry-mirror")["droplet_guid"]
    params = yaml.safe_load(Path(env["PARAMS_FILE"]).read_text())
    params["registry"]["log_level"] = "warn"
    Path(env["PARAMS_FILE"]).write_text(yaml.safe_dump(params))
    assert run_task("deploy", build, env, COMPONENT="registry").returncode == 0
    rolled = run_task("rollback", build, env, COMPONENT="registry")
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert cf.app("docker-registry-mirror")["droplet_guid"] == first

    # No secret reached an executed notebook, a derived params file or the logs.
    texts = [p.read_text(errors="replace") for p in (build / "notebooks").iterdir() if p.suffix in (".ipynb", ".yaml")]
    for secret in (env["CF_PASSWORD"], env["TEST_DOCKERHUB_TOKEN"], "fake-s3-secret-DO-NOT-LEAK"):
        for text in [*texts, verified.stdout, verified.stderr, rolled.stderr]:
            assert secret not in text


def test_a_task_without_its_required_parameter_stops_before_anything(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    build, env = build_folder(runner, "staging")
    done = run_task("deploy", build, env)  # no COMPONENT
    assert done.returncode == 2 and "COMPONENT is required" in done.stderr
    assert [r for r in cf.requests if r.mutating] == []


def test_the_test_task_runs_the_unit_suite(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTEST_ARGS": "-q -x -p no:warnings -k committed_pipeline"}
    done = subprocess.run(["bash", str(ROOT / "ci/tasks/test/run.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
