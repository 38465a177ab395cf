"""Run a pipeline task as Concourse runs it, for tests.

Concourse's task semantics (atc/exec/task_step.go, atc/worker/runtime): the container starts in a fresh
build folder holding only the task's declared inputs (each in a subfolder named after it, or after its
`path`) and its outputs as empty folders; the environment is the task's `params` plus
`ATC_EXTERNAL_URL` (no BUILD_* variables reach a task: those exist only for resource `put`/`get`
metadata); `run.path` is executed from the build folder (or `run.dir`). The image's environment is built
as ci/task-image/Dockerfile builds it: its COPY and RUN instructions (but apt-get: the host provides
Debian's tools) run against a folder standing for the image's root, with the host's Python 3.11 as
Debian 12's `python3`. That venv is cached by the content of the Dockerfile and what it copies, so it
is built once per machine, not per test run.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "ci" / "task-image" / "Dockerfile"
ATC_EXTERNAL_URL = "https://ci.example.test"
# What a Debian 12 container's PATH holds besides what the image's ENV adds.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class TaskImage:
    """A folder standing for the task image's root, and the environment its ENV lines give."""
    root: Path
    env: dict[str, str]


@dataclass
class TaskRun:
    build: Path
    returncode: int
    stdout: str
    stderr: str

    def output(self, name: str) -> Path:
        return self.build / name


def task_image(cache: Path | None = None) -> TaskImage:
    """The task image built from ci/task-image/Dockerfile (once; later calls reuse the cached build)."""
    instructions = _instructions(DOCKERFILE.read_text())
    digest = hashlib.sha256(DOCKERFILE.read_bytes())
    for kind, argument in instructions:
        if kind == "COPY":
            for source in shlex.split(argument)[:-1]:
                for path in _files(ROOT / source):
                    digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "registry-mirror"
    root = cache / f"task-image-{digest.hexdigest()[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several pytest processes may ask at once
        if not (root / ".built").exists():
            shutil.rmtree(root, ignore_errors=True)
            _build(root, instructions)
            (root / ".built").touch()
    return TaskImage(root, _image_env(root, instructions))


def copy_tracked_files(root: Path, dest: Path) -> Path:
    """The working tree's tracked and new files (what a clone of it would hold), copied into `dest`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (root / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)
    return dest


def source_input(dest: Path, root: Path = ROOT) -> Path:
    """What the git resource's `get` leaves: a clone at one commit (here: the working tree's tracked and
    new files, committed afresh, so uncommitted work is what runs) and `.git/ref` naming the commit."""
    copy_tracked_files(root, dest)
    git = ["git", "-c", "user.name=pipeline-test", "-c", "user.email=pipeline-test@localhost", "-c",
           "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the commit under test"]):
        subprocess.run([*git, *command], cwd=dest, capture_output=True, check=True, timeout=120)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True,
                            check=True).stdout.strip()
    (dest / ".git" / "ref").write_text(commit + "\n")
    (dest / ".git" / "short_ref").write_text(commit[:7] + "\n")
    return dest


def run_task(task_file: Path, *, workdir: Path, image: TaskImage, inputs: dict[str, Path],
             params: dict[str, str] | None = None, timeout: float = 600) -> TaskRun:
    """Run one task: copy its declared inputs into a fresh build folder, create its outputs, run it
    with only its params. An input the task does not declare is refused (Concourse would not mount it);
    a required one that is missing fails as Concourse fails the step."""
    config = yaml.safe_load(task_file.read_text())
    declared = {i["name"]: i for i in config.get("inputs", [])}
    unknown = set(inputs) - set(declared)
    if unknown:
        raise ValueError(f"{task_file}: inputs {sorted(unknown)} are not declared by the task")
    workdir.mkdir(parents=True, exist_ok=True)
    build = Path(os.path.realpath(workdir)) / f"build-{len(list(workdir.glob('build-*')))}"
    build.mkdir()
    for name, spec in declared.items():
        if name in inputs:
            shutil.copytree(inputs[name], build / spec.get("path", name), symlinks=True)
        elif not spec.get("optional"):
            raise ValueError(f"{task_file}: required input {name} not given")
    for output in config.get("outputs", []):
        (build / output.get("path", output["name"])).mkdir(parents=True, exist_ok=True)
    env = {name: _env_value(value) for name, value in (config.get("params") or {}).items() if value is not None}
    env.update(params or {})
    env.update(image.env, ATC_EXTERNAL_URL=ATC_EXTERNAL_URL)
    run = config["run"]
    done = subprocess.run([run["path"], *run.get("args", [])], cwd=build / run.get("dir", "."), env=env,
                          capture_output=True, text=True, timeout=timeout)
    return TaskRun(build, done.returncode, done.stdout, done.stderr)


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else yaml.safe_dump(value).strip()


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            kind, _, argument = line.partition(" ")
            found.append((kind.upper(), argument.strip()))
    return found


def _in_image(root: Path, text: str) -> str:
    return re.sub(r"(?<![\w/])/opt/", f"{root}/opt/", text)


def _build(root: Path, instructions: list[tuple[str, str]]) -> None:
    python = Path(sys.base_prefix) / "bin"  # the host's Python 3.11, as Debian 12's python3
    env = {"PATH": f"{python}:{BASE_PATH}", "HOME": str(root), **{k: v for k, v in os.environ.items()
                                                                    if k.startswith("PIP_")}}
    for kind, argument in instructions:
        if kind == "COPY":
            *sources, dest = shlex.split(argument)
            target = Path(_in_image(root, dest))
            target.mkdir(parents=True, exist_ok=True) if dest.endswith("/") else target.parent.mkdir(
                parents=True, exist_ok=True)
            for source in sources:
                if (ROOT / source).is_dir():  # Docker copies a folder's contents
                    shutil.copytree(ROOT / source, target, dirs_exist_ok=True)
                else:
                    shutil.copy2(ROOT / source, target / Path(source).name if dest.endswith("/") else target)
        elif kind == "RUN" and "apt-get" not in argument:
            subprocess.run(["bash", "-euo", "pipefail", "-c", _in_image(root, argument)], env=env, check=True,
                           cwd=root, timeout=900)


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _image_env(root: Path, instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {"PATH": BASE_PATH}
    for kind, argument in instructions:
        if kind == "ENV":
            name, _, value = argument.partition("=")
            env[name] = _in_image(root, value).replace("$PATH", env.get("PATH", "")).replace(
                f"${{{name}}}", env.get(name, ""))
    return env
