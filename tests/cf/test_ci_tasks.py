"""The pipeline's tasks, run as Concourse runs them (tests/concourse_task.py): a fresh build folder holding
only each task's declared inputs, only its params (and ATC_EXTERNAL_URL) in the environment, the Python
environment ci/task-image/Dockerfile builds (never the project's editable .venv), against the CF API
stand-in (and, for verify, the deployed proxy behind the CF edge stand-ins)."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import yaml

from tests.cf.conftest import CF_PASSWORD, CF_USER, CHECK_IMAGE, HUB_TOKEN, RULES, ROOT, CfRunner, public_route
from tests.concourse_task import TaskImage, TaskRun, run_task, source_input, task_image
from tests.fakes.cf_api import FakeCloudFoundry
from registry_mirror.processes import free_port

TASKS = ROOT / "ci" / "tasks"

# Each task runs in the task image's own interpreter, notebooks under papermill included: not the fast loop.
pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="session")
def image() -> TaskImage:
    return task_image()


@pytest.fixture(scope="session")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `src` input: the commit's files as the git resource leaves them."""
    return source_input(tmp_path_factory.mktemp("src") / "src")


class Pipeline:
    """The inputs and params the pipeline's jobs give the tasks, pointed at the stand-ins."""

    def __init__(self, runner: CfRunner, image: TaskImage, src: Path, environment: str = "staging") -> None:
        self.runner, self.image, self.src = runner, image, src
        self.inputs = runner.tmp / "inputs"
        (self.inputs / "security-rules").mkdir(parents=True)
        (self.inputs / "security-rules" / "security-rules.yaml").write_text(yaml.safe_dump(RULES))
        (self.inputs / "registry-image").mkdir()
        (self.inputs / "registry-image" / "digest").write_text(runner.hub.digest + "\n")
        params = runner.params(environment)
        # The name the committed params give the token's variable, as the pipeline sets it.
        params["upstream"]["password_env"] = "DOCKERHUB_TOKEN"
        self.params_file = runner.tmp / "params-from-repo.yaml"
        self.params_file.write_text(yaml.safe_dump(params))
        self.env = {"ENVIRONMENT": environment, "PARAMS_FILE": str(self.params_file), "CF_USERNAME": CF_USER,
                    "CF_PASSWORD": CF_PASSWORD, "DOCKERHUB_TOKEN": HUB_TOKEN}

    def run(self, task: str, src: Path | None = None, extra: dict[str, Path] | None = None, **params: str) -> TaskRun:
        task_file = TASKS / task / "task.yml"
        declared = {i["name"] for i in yaml.safe_load(task_file.read_text()).get("inputs", [])}
        inputs = {"src": src or self.src, **{name: self.inputs / name for name in ("security-rules", "registry-image")
                                             if name in declared}, **(extra or {})}
        return run_task(task_file, workdir=self.runner.tmp / "builds", image=self.image, inputs=inputs,
                        params={**self.env, **params})


def records(run: TaskRun) -> list[Path]:
    return sorted(run.output("notebooks").glob("*.tgz"))


def test_deploy_verify_and_rollback_tasks_run_green(runner: CfRunner, cf: FakeCloudFoundry, mirror_app: str,
                                                    image: TaskImage, src: Path) -> None:
    pipeline = Pipeline(runner, image, src)
    deployed = [pipeline.run("deploy", COMPONENT=component) for component in ("registry", "proxy")]
    for done in deployed:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # The digest the pipeline handed the task is the one deployed.
    assert cf.app("docker-registry-mirror")["image"].endswith(runner.hub.digest)
    # One record per task run (one file for the s3 put's glob), named by what it ran.
    for done, component in zip(deployed, ("registry", "proxy")):
        [packed] = records(done)
        assert packed.name.startswith(f"deploy-staging-{component}-src-")
        assert f"registry-{runner.hub.digest.removeprefix('sha256:')[:12]}" in packed.name
        assert "./deploy.ipynb" in tarfile.open(packed).getnames()
    assert records(deployed[0])[0].name != records(deployed[1])[0].name

    with public_route(cf, mirror_app) as edge:
        verified = pipeline.run("verify", PUBLIC_URL=edge.public_url, CHECK_IMAGE=CHECK_IMAGE)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-3000:]
    results = yaml.safe_load((verified.output("notebooks") / "policy-results.json").read_text())
    assert results["ok"] is True
    [packed] = records(verified)
    assert "./policy-results.json" in tarfile.open(packed).getnames()

    # A second registry deploy with a change, then the rollback task puts the first one back.
    first = cf.app("docker-registry-mirror")["droplet_guid"]
    params = yaml.safe_load(pipeline.params_file.read_text())
    params["registry"]["log_level"] = "warn"
    pipeline.params_file.write_text(yaml.safe_dump(params))
    second = pipeline.run("deploy", COMPONENT="registry")
    assert second.returncode == 0
    # Given that deploy's output (as on_failure does), the rollback undoes what it changed and says so.
    rolled = pipeline.run("rollback", extra={"deploy-notebooks": second.output("notebooks")}, COMPONENT="registry")
    assert rolled.returncode == 0, rolled.stdout[-2000:] + rolled.stderr[-3000:]
    assert cf.app("docker-registry-mirror")["droplet_guid"] == first
    assert "ROLL BACK: this build changed docker-registry-mirror" in rolled.stdout
    assert f"serves droplet {first} again" in rolled.stdout

    # No secret reached an executed notebook, a derived params file or the logs.
    runs = [*deployed, verified, rolled]
    texts = [p.read_text(errors="replace") for r in runs for p in r.output("notebooks").iterdir()
             if p.suffix in (".ipynb", ".yaml", ".json")]
    for secret in (CF_PASSWORD, HUB_TOKEN, "fake-s3-secret-DO-NOT-LEAK"):
        for text in [*texts, *(r.stdout + r.stderr for r in runs)]:
            assert secret not in text


def test_a_production_deploy_the_runbook_cancelled_back_is_not_rolled_back_further(
        runner: CfRunner, cf: FakeCloudFoundry, image: TaskImage, src: Path) -> None:
    """on_failure: cancel already put back what served before the build; the job's rollback task must
    not then move production one more revision back."""
    pipeline = Pipeline(runner, image, src, "production")
    for level in ("info", "warn"):
        params = yaml.safe_load(pipeline.params_file.read_text())
        params["registry"]["log_level"] = level
        pipeline.params_file.write_text(yaml.safe_dump(params))
        done = pipeline.run("deploy", COMPONENT="registry")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    served = cf.app("docker-registry-mirror")["droplet_guid"]
    cf.faults.crash_when = lambda env, image: "panic: boom" if image and env.get("REGISTRY_LOG_LEVEL") == "debug" \
        else None
    params["registry"]["log_level"] = "debug"
    pipeline.params_file.write_text(yaml.safe_dump(params))
    failed = pipeline.run("deploy", COMPONENT="registry")
    assert failed.returncode != 0 and cf.app("docker-registry-mirror")["droplet_guid"] == served
    rolled = pipeline.run("rollback", extra={"deploy-notebooks": failed.output("notebooks")}, COMPONENT="registry")
    assert rolled.returncode == 0, rolled.stdout[-2000:] + rolled.stderr[-3000:]
    assert cf.app("docker-registry-mirror")["droplet_guid"] == served
    assert "NO ROLLBACK" in rolled.stdout and "nothing to roll back" in rolled.stdout
    # The failed deploy's record and the rollback's are two files: neither replaces the other.
    [deploy_record], [rollback_record] = records(failed), records(rolled)
    assert "./deploy.ipynb" in tarfile.open(deploy_record).getnames()
    assert deploy_record.name.startswith("deploy-production-registry-")
    assert rollback_record.name.startswith("rollback-production-registry-")


def test_a_task_runs_the_checked_commits_library(runner: CfRunner, cf: FakeCloudFoundry, image: TaskImage,
                                                 src: Path, tmp_path: Path) -> None:
    """The code a task runs is its `src` input's, not a copy in the image: a commit whose library
    refuses to load makes the task fail with that commit's message."""
    changed = tmp_path / "changed-src"
    import shutil
    shutil.copytree(src, changed)
    module = changed / "lib/registry_mirror/pipeline_params.py"
    module.write_text(module.read_text() + 'raise SystemExit("the checked commit\'s pipeline_params ran")\n')
    done = Pipeline(runner, image, src).run("deploy", src=changed, COMPONENT="registry")
    assert done.returncode != 0
    assert "the checked commit's pipeline_params ran" in done.stderr, done.stderr[-3000:]
    assert [r for r in cf.requests if r.mutating] == []


def test_a_task_without_its_required_parameter_stops_before_anything(runner: CfRunner, cf: FakeCloudFoundry,
                                                                     image: TaskImage, src: Path) -> None:
    done = Pipeline(runner, image, src).run("deploy")  # no COMPONENT
    assert done.returncode == 2 and "COMPONENT is required" in done.stderr
    assert [r for r in cf.requests if r.mutating] == []


def test_the_test_task_runs_the_unit_suite(tmp_path: Path, image: TaskImage, src: Path) -> None:
    # The pipeline mutation tests list the repository with git: they need the clone the git resource gives.
    done = run_task(TASKS / "test" / "task.yml", workdir=tmp_path, image=image, inputs={"src": src},
                    params={"PYTEST_ARGS": "-q -x -p no:warnings -p no:cacheprovider -k duplicate"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_the_analyse_task_leaves_one_record_with_its_html_reports(tmp_path: Path, image: TaskImage,
                                                                   src: Path) -> None:
    """One archive for the s3 put's one-file glob, holding both executed notebooks and the HTML rendered
    from them, even when one report fails (here: no S3 answers for the cache inventory)."""
    logs = tmp_path / "proxy-logs"
    logs.mkdir()
    line = ('NginxLog "10.10.2.3, 10.0.0.7" "GET /v2/library/hello/manifests/1 HTTP/1.1" 200 500 client=10.10.2.3 '
            'rt=0.010 urt=0.009 ua="10.255.1.2:5000" cache={} t=2026-11-01T01:00:00+00:00')
    (logs / "proxy.log").write_text(line.format("MISS") + "\n" + line.format("HIT") + "\n")
    rules = tmp_path / "security-rules"
    rules.mkdir()
    (rules / "security-rules.yaml").write_text(yaml.safe_dump(RULES))
    done = run_task(TASKS / "analyse" / "task.yml", workdir=tmp_path / "builds", image=image,
                    inputs={"src": src, "security-rules": rules, "proxy-logs": logs},
                    params={"ENVIRONMENT": "staging", "BUCKET": "mirror-cache", "AWS_ACCESS_KEY_ID": "AKIAFAKESTANDIN",
                            "AWS_SECRET_ACCESS_KEY": "fake-s3-secret-DO-NOT-LEAK",
                            "S3_ENDPOINT": f"http://127.0.0.1:{free_port()}", "AWS_DEFAULT_REGION": "us-east-1",
                            "LIMIT_PER_WINDOW": "100"})
    assert done.returncode != 0  # cache_usage found no S3: the task fails, and still keeps its record
    [packed] = records(done)
    assert packed.name.startswith("analyse-staging-src-")
    names = tarfile.open(packed).getnames()
    for member in ("./pull_savings.ipynb", "./pull_savings.html", "./cache_usage.ipynb", "./cache_usage.html"):
        assert member in names, names
    html = (done.output("notebooks") / "pull_savings.html").read_text()
    assert "The mirror served" in html and "fake-s3-secret-DO-NOT-LEAK" not in html
