"""The Concourse pipeline, checked offline: it passes as committed, and each way of breaking it that a
change could bring in is caught and named."""
from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_mirror.ci_pipeline import check_pipeline
from tests.concourse_task import copy_tracked_files

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_pipeline_passes() -> None:
    report = check_pipeline(ROOT)
    assert report.ok, report.verdict()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's tracked files (what a clone holds)."""
    return copy_tracked_files(ROOT, tmp_path_factory.mktemp("repo"))


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def remove_production_passed(repo: Path) -> None:
    pipeline = repo / "ci/pipeline.yml"
    text = pipeline.read_text()
    at = text.index("- name: deploy-registry-production")
    head, tail = text[:at], text[at:]
    pipeline.write_text(head + tail.replace("      passed: [verify-staging]\n", "", 1))


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing task file": (lambda r: (r / "ci/tasks/rollback/task.yml").unlink(),
                          "task file src-runbooks/ci/tasks/rollback/task.yml does not exist"),
    "undeclared notebook parameter": (
        lambda r: edit(r / "ci/tasks/deploy/run.sh", '-p component "$COMPONENT"', '-p componnet "$COMPONENT"'),
        "passes -p componnet, which notebooks/deploy.ipynb does not declare"),
    "secret on -p": (
        lambda r: edit(r / "ci/tasks/verify/run.sh", '-p check_image "${CHECK_IMAGE:-}"',
                       '-p check_image "${CHECK_IMAGE:-}" -p upstream_token "$DOCKERHUB_TOKEN"'),
        "passes upstream_token with -p: secrets stay in the environment"),
    "missing passed": (remove_production_passed, "src-runbooks has no passed:"),
    "path filter matching nothing": (
        lambda r: (r / "environment.yml").rename(r / "conda-environment.yml"),
        "paths filter 'environment.yml' matches no file"),
    "undefined var": (lambda r: edit(r / "ci/pipeline.yml", "((git_branch))", "((git_brnch))"),
                      "uses ((git_brnch)), which no ci/vars/*.yml defines"),
    "unknown resource": (lambda r: edit(r / "ci/pipeline.yml", "    - get: security-rules\n      trigger: true\n",
                                        "    - get: security-ruels\n      trigger: true\n"),
                         "unknown resource 'security-ruels'"),
    "passed job that never used the resource": (
        lambda r: edit(r / "ci/pipeline.yml", "      passed: [deploy-registry-staging]\n      params: {skip_download: true}",
                       "      passed: [test]\n      params: {skip_download: true}"),
        "job 'test' does not interact with resource 'registry-image'"),
    "production triggered automatically": (
        lambda r: edit(r / "ci/pipeline.yml", "    - get: src-runbooks\n      passed: [verify-staging]\n",
                       "    - get: src-runbooks\n      trigger: true\n      passed: [verify-staging]\n"),
        "production deploys are manual"),
    "task param the task does not declare": (
        lambda r: edit(r / "ci/pipeline.yml", "      COMPONENT: registry\n", "      COMPONENT: registry\n      CMOPONENT: x\n"),
        "gets param(s) CMOPONENT"),
    # Concourse's own load rules (lib/registry_mirror/concourse_rules.py names where each lives).
    "unused resource": (lambda r: append_resource(r, "- name: spare\n  type: git\n  source: {uri: ((git_uri))}\n"),
                        "resource 'spare' is not used"),
    "job in no group": (lambda r: edit(r / "ci/pipeline.yml", " report-staging,\n", "\n"),
                        "job 'report-staging' belongs to no group"),
    "group naming an unknown job": (lambda r: edit(r / "ci/pipeline.yml", "jobs: [set-self, test,", "jobs: [set-self, tset, test,"),
                                    "no jobs match 'tset' for group 'all'"),
    "same resource fetched twice in a job": (
        lambda r: edit(r / "ci/pipeline.yml", "    - get: proxy-logs\n", "    - get: proxy-logs\n    - get: proxy-logs\n"),
        "jobs.report-staging: .get(proxy-logs): repeated name"),
    "duplicate YAML key": (lambda r: edit(r / "ci/pipeline.yml", "  serial_groups: [staging]\n",
                                          "  serial_groups: [staging]\n  serial_groups: [production]\n"),
                           "key 'serial_groups' is set twice"),
    "passed: cycle": (lambda r: edit(r / "ci/pipeline.yml", "      passed: [set-self]\n    - get: task-image\n  - task: test",
                                     "      passed: [set-self, verify-staging]\n    - get: task-image\n  - task: test"),
                      "pipeline contains a cycle"),
    "task with file and config": (
        lambda r: edit(r / "ci/pipeline.yml", "    file: src-runbooks/ci/tasks/test/task.yml\n",
                       "    file: src-runbooks/ci/tasks/test/task.yml\n    config: {platform: linux, run: {path: 'true'}}\n"),
        "must specify one of `file:` or `config:`, not both"),
    "unknown key in a resource": (lambda r: edit(r / "ci/pipeline.yml", "  icon: lock\n", "  icon: lock\n  check_evry: 1h\n"),
                                  "resources[2] (security-rules): unknown field(s) check_evry"),
    "unknown key in a job": (lambda r: edit(r / "ci/pipeline.yml", "  serial_groups: [production]\n",
                                            "  serial_groups: [production]\n  serial_group: [production]\n"),
                             "unknown field(s) serial_group"),
    "unknown key in a group": (lambda r: edit(r / "ci/pipeline.yml", "- name: all\n", "- name: all\n  job: [test]\n"),
                               "groups[0] (all): unknown field(s) job"),
    "duplicate job name": (lambda r: edit(r / "ci/pipeline.yml", "- name: deploy-proxy-production\n",
                                          "- name: deploy-registry-production\n"),
                           "have the same name ('deploy-registry-production')"),
    "a key the step's kind does not have": (
        lambda r: edit(r / "ci/pipeline.yml", "      put: artifacts\n      timeout: 15m\n",
                       "      put: artifacts\n      trigger: true\n      timeout: 15m\n"),
        ".put(artifacts): unknown fields ['trigger']"),
    "two kinds in one step": (
        lambda r: edit(r / "ci/pipeline.yml", "    - get: proxy-logs\n", "    - get: proxy-logs\n      put: slack\n"),
        ".put(slack): unknown fields ['get']"),
    # What only this project needs: every task reads the commit its src resource's filter watches.
    "src filter ignoring params": (lambda r: edit(r / "ci/pipeline.yml", " params/*,", ""),
                                   "ignores params/"),
    "production task image not from staging": (
        lambda r: edit(r / "ci/pipeline.yml", "    - get: task-image\n      passed: [verify-staging]\n",
                       "    - get: task-image\n"),
        "task-image has no passed:"),
    # The pipeline's own safety and noise.
    "unsigned self-setting": (lambda r: edit(r / "ci/pipeline.yml",
                                             "    commit_verification_keys: ((git_commit_verification_keys))\n", ""),
                              "verifies no commit signatures"),
    "task without a timeout": (lambda r: edit(r / "ci/pipeline.yml", "  - task: verify\n    timeout: 30m\n",
                                              "  - task: verify\n"),
                               "task verify has no timeout"),
    "a job not waiting on set-self": (
        lambda r: edit(r / "ci/pipeline.yml", "      trigger: true\n      passed: [set-self]\n", "      trigger: true\n"),
        "job test: src-runbooks has no passed:, so it can run before set-self"),
    "errors unheard": (lambda r: edit(r / "ci/pipeline.yml", "  on_error: *notify-error\n", "", 1),
                       "no on_error notification"),
}


def append_resource(repo: Path, block: str) -> None:
    edit(repo / "ci/pipeline.yml", "\ngroups:\n", "\n" + block + "\ngroups:\n")


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_way_of_breaking_the_pipeline_is_caught(pristine: Path, tmp_path: Path, name: str) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo)
    assert check_pipeline(repo).ok, "the copy must pass before it is broken"
    breaker, says = BREAKS[name]
    breaker(repo)
    report = check_pipeline(repo)
    assert not report.ok
    assert any(says in problem for problem in report.problems), report.problems


def test_every_task_param_is_documented_in_its_task_yml() -> None:
    for task in sorted((ROOT / "ci/tasks").glob("*/task.yml")):
        lines = task.read_text().splitlines()
        in_params = False
        for line in lines:
            if re.match(r"^\S", line):
                in_params = line.startswith("params:")
                continue
            if in_params and re.match(r"^  [A-Z_]+:", line):
                assert "#" in line and ("required" in line or "optional" in line), f"{task}: {line}"
