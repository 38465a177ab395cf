"""Offline checks of the Concourse pipeline (ci/pipeline.yml) and its tasks, without a Concourse.

`fly validate-pipeline` cannot be built here (the Go module proxy refuses every github.com/concourse
module), so Concourse's own load rules are applied by `concourse_rules` (read from Concourse's source),
the structure is checked with ol-concourse's pydantic models of Concourse's config, and what only this
project knows is checked here: each task's `src` filter covers what tasks read, task files and scripts exist,
every papermill `-p` is an option the notebook declares and never a secret, every var is defined,
every git `paths` filter still matches a file, production is manual and gated on verification.
"""
from __future__ import annotations

import fnmatch
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from .concourse_rules import job_steps, load_rules, walk
from .parameters import PROJECT_ROOT, SETTINGS_KEYS

# What the tasks read or run from their `src` input (ci/tasks/lib.sh puts src/lib first on PYTHONPATH).
TASK_READS = ("lib/", "notebooks/", "templates/", "params/", "ci/tasks/", "ci/task-image/")
SECRET_WORDS = ("password", "secret", "token", "key", "credential")
VAR = re.compile(r"\(\(([A-Za-z0-9_.-]+)\)\)")
PAPERMILL_CALL = re.compile(r"run_notebook\s+(\w+)\s+\S+((?:\s*\\?\n?\s*-p\s+\S+\s+\S+)*)")
P_OPTION = re.compile(r"-p\s+(\S+)\s+")


@dataclass
class PipelineReport:
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def verdict(self) -> str:
        return "PIPELINE OK" if self.ok else "PIPELINE BROKEN: " + "; ".join(self.problems)


def check_pipeline(root: Path = PROJECT_ROOT) -> PipelineReport:
    """Every check; each problem is one sentence naming what is wrong and where."""
    from ol_concourse.lib.models.pipeline import Pipeline

    report = PipelineReport()
    ci = root / "ci"
    text = (ci / "pipeline.yml").read_text()
    data = yaml.safe_load(text)
    report.problems += load_rules(text)  # Concourse's own rules first: each names what fly would
    try:
        Pipeline.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - pydantic's message is the finding
        report.problems.append(f"ci/pipeline.yml does not match Concourse's pipeline schema: {str(exc)[:400]}")
        return report
    resources = {r["name"]: r for r in data.get("resources", [])}
    jobs = {j["name"]: j for j in data.get("jobs", [])}
    report.problems += _sources(root, jobs, resources)
    report.problems += _tasks(root, jobs)
    report.problems += _vars(ci, text)
    report.problems += _paths(root, resources)
    report.problems += _policy(jobs)
    report.problems += _hygiene(jobs, resources)
    report.problems += _scripts(root)
    return report


# ------------------------------------------------------------------------------ steps and references

def _sources(root: Path, jobs: dict[str, dict], resources: dict[str, dict]) -> list[str]:
    """A task's `src` must be a git resource whose `paths` cover everything the tasks read or run: a change
    its filter ignores never makes a new version, so it would never be tested or reach an environment."""
    files = [f for f in _repo_files(root) if f.startswith(TASK_READS)]
    problems = []
    for name, job in jobs.items():
        for step in job_steps(job):
            if "task" not in step:
                continue
            source = (step.get("input_mapping") or {}).get("src", "src")
            patterns = ((resources.get(source) or {}).get("source") or {}).get("paths")
            missed = [f for f in files if patterns and not any(fnmatch.fnmatch(f, p) for p in patterns)]
            if missed:
                problems.append(f"job {name}: task {step['task']} takes src from {source}, whose paths filter "
                                f"ignores {', '.join(missed[:3])}{' ...' if len(missed) > 3 else ''}: a change there "
                                "would never be tested or reach an environment")
    return problems


def _tasks(root: Path, jobs: dict[str, dict]) -> list[str]:
    from ol_concourse.lib.models.pipeline import TaskConfig

    problems = []
    for name, job in jobs.items():
        for step in job_steps(job):
            if "task" not in step:
                continue
            if "file" not in step:
                problems.append(f"job {name}: task {step['task']} has no file: (inline configs are not used here)")
                continue
            path = root / step["file"].split("/", 1)[1]
            if not path.is_file():
                problems.append(f"job {name}: task file {step['file']} does not exist in the repository")
                continue
            config = yaml.safe_load(path.read_text())
            try:
                TaskConfig.model_validate(config)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{path.relative_to(root)} does not match Concourse's task schema: {str(exc)[:300]}")
                continue
            script = root / config["run"]["path"].split("/", 1)[1]
            if not script.is_file():
                problems.append(f"{path.relative_to(root)}: run.path {config['run']['path']} does not exist")
            declared = set(config.get("params") or {})
            given = set(step.get("params") or {})
            if given - declared:
                problems.append(f"job {name}: task {step['task']} gets param(s) {', '.join(sorted(given - declared))} "
                                f"that {path.relative_to(root)} does not declare")
    return problems


# ------------------------------------------------------------------------------ vars, paths, policy

def _vars(ci: Path, text: str) -> list[str]:
    defined: set[str] = set()
    for env_file in sorted((ci / "vars").glob("*.yml")):
        defined |= set(yaml.safe_load(env_file.read_text()) or {})
    used = set(VAR.findall(text))
    return [f"ci/pipeline.yml uses (({v})), which no ci/vars/*.yml defines or names as a credential"
            for v in sorted(used - defined)]


def _paths(root: Path, resources: dict[str, dict]) -> list[str]:
    files = _repo_files(root)
    problems = []
    for name, resource in resources.items():
        if resource.get("type") != "git":
            continue
        for pattern in (resource.get("source") or {}).get("paths") or []:
            if not any(fnmatch.fnmatch(f, pattern) for f in files):
                problems.append(f"resource {name}: paths filter {pattern!r} matches no file in the repository, "
                                "so no change there would ever trigger it")
    return problems


def _policy(jobs: dict[str, dict]) -> list[str]:
    problems = []
    if not any(s.get("set_pipeline") == "self" for j in jobs.values() for s in walk(j.get("plan", []))):
        problems.append("no job sets the pipeline itself (set_pipeline: self)")
    for name, job in jobs.items():
        if "production" not in name:
            continue
        for step in walk(job.get("plan", [])):
            if "get" in step and step.get("trigger"):
                problems.append(f"job {name}: production deploys are manual, but {step['get']} triggers it")
            if "get" in step and not step.get("passed"):
                problems.append(f"job {name}: {step['get']} has no passed:, so production could deploy what "
                                "staging never verified")
        if not job.get("serial_groups"):
            problems.append(f"job {name}: no serial_groups, so it could run beside another deploy")
    return problems


def _hygiene(jobs: dict[str, dict], resources: dict[str, dict]) -> list[str]:
    """What keeps the pipeline itself safe and heard: signed commits for what sets the pipeline, a
    timeout on every step that can hang, a notification for every way a job can end badly."""
    problems = []
    gated = {s["get"] for s in job_steps(jobs.get("set-self", {})) if "get" in s}
    for name, job in jobs.items():
        for step in job_steps(job):
            if name != "set-self" and step.get("get") in gated and not step.get("passed"):
                problems.append(f"job {name}: {step['get']} has no passed:, so it can run before set-self has set "
                                "the pipeline from that commit")
        for hook in ("on_failure", "on_error", "on_abort"):
            if hook == "on_abort" and name == "set-self":
                continue  # an aborted set-self was aborted by a person, who knows
            if not isinstance(job.get(hook), dict):
                problems.append(f"job {name}: no {hook} notification, so that end goes unheard")
        for step in job_steps(job):
            kind = next((k for k in ("task", "set_pipeline", "put") if k in step), None)
            if kind and "timeout" not in step:
                problems.append(f"job {name}: {kind} {step[kind]} has no timeout, so a hung step holds its serial "
                                "group forever")
            if step.get("set_pipeline") == "self":
                source = (step.get("file") or "").split("/", 1)[0]
                if not ((resources.get(source) or {}).get("source") or {}).get("commit_verification_keys"):
                    problems.append(f"job {name}: {source} sets the pipeline but verifies no commit signatures "
                                    "(commit_verification_keys)")
    return problems


# ------------------------------------------------------------------------------ task scripts

def _scripts(root: Path) -> list[str]:
    problems = []
    for script in sorted((root / "ci" / "tasks").glob("*/run.sh")):
        text = script.read_text()
        for notebook, options in PAPERMILL_CALL.findall(text):
            path = root / "notebooks" / f"{notebook}.ipynb"
            where = script.relative_to(root)
            if not path.is_file():
                problems.append(f"{where}: runs notebooks/{notebook}.ipynb, which does not exist")
                continue
            declared = _options(path)
            for option in P_OPTION.findall(options):
                if any(word in option.lower() for word in SECRET_WORDS):
                    problems.append(f"{where}: passes {option} with -p: secrets stay in the environment "
                                    "(papermill writes every parameter into the executed notebook)")
                elif option not in declared:
                    problems.append(f"{where}: passes -p {option}, which notebooks/{notebook}.ipynb does not "
                                    "declare (papermill would only warn)")
    return problems


def _options(notebook: Path) -> set[str]:
    """The runbook's own parameters: its parameters cell minus the settings keys params files give."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    names = {m.group(1) for m in re.finditer(r"^([A-Za-z_]\w*)\s*(?::[^=]+)?=", cell.source, re.M)}
    return names - set(SETTINGS_KEYS)


def _repo_files(root: Path) -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True,
                                timeout=30).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    return listed or [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]
