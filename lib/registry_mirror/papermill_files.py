"""The params files papermill was given (`-f FILE`), checked from inside the kernel it started.

Papermill merges `-f` files into one dict before the notebook runs, and an empty file merges to
nothing: the notebook would then run on its parameters cell's local defaults, as if no file had been
named, and deploy or judge the wrong stack. The kernel's parent process is papermill's CLI, so its
command line says which files were named; each must be a readable, non-empty mapping.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import ParameterError
from .yaml_files import read_yaml_mapping

_FILE_OPTIONS = ("-f", "--parameters_file")


def check_papermill_files(pid: int | None = None) -> list[Path]:
    """Refuse an empty, list-shaped, unreadable or missing file named with papermill's `-f`; returns
    the files, [] when the kernel was not started by papermill's CLI (JupyterLab, nbmake, pytest)."""
    argv, cwd = _command_line(os.getppid() if pid is None else pid)
    names = papermill_files(argv)
    if any(arg == "--cwd" or arg.startswith("--cwd=") for arg in argv):
        # Papermill's --cwd moves papermill's own process there before it starts the kernel: a relative
        # -f path no longer resolves from its cwd. Papermill read it (through ParamsFileHandler, which
        # checks the same) before it moved, so only absolute paths are checked again here.
        names = [name for name in names if Path(name).is_absolute()]
    files = [cwd / name for name in names]
    for path in files:
        label = str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)
        data = read_yaml_mapping(path, label=f"params file {label}")
        if not data:
            raise ParameterError(f"params file {label}: is empty, so papermill injected nothing and the notebook "
                                 "would run on its local defaults; name a file that holds the environment's keys "
                                 "(see params/local.yaml)")
    return files


def papermill_files(argv: list[str]) -> list[str]:
    """The `-f`/`--parameters_file` values of a papermill command line, in order; [] for any other."""
    if not any(Path(arg).name == "papermill" for arg in argv[:4]):
        return []
    found, args = [], iter(argv[1:])
    for arg in args:
        if arg in _FILE_OPTIONS:
            found.append(next(args, ""))
        elif arg.startswith("--parameters_file="):
            found.append(arg.partition("=")[2])
        elif arg.startswith("-f") and len(arg) > 2 and not arg.startswith("--"):
            found.append(arg[2:])
    return found


def _command_line(pid: int) -> tuple[list[str], Path]:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        return [a for a in argv if a], Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:  # not Linux, or the parent is gone: nothing to check
        return [], Path.cwd()


class ParamsFileHandler:
    """Papermill's own side of the same check, registered as a `papermill.io` handler for local paths
    (pyproject.toml): a `-f` file that is missing, unreadable, empty or not a mapping stops papermill's
    CLI with one sentence naming it, before any kernel starts, instead of papermill's traceback (or,
    for an empty file, a run on the defaults). Every other read and write (the notebooks) goes to
    papermill's local handler unchanged."""

    @classmethod
    def read(cls, path: str) -> str:
        if path.endswith((".yaml", ".yml")):
            try:
                read_yaml_mapping(Path(path), label=f"params file {path}")
            except ParameterError as exc:
                # Papermill's CLI catches nothing: an exception here would print its whole traceback.
                sys.stderr.write(f"papermill: {exc}\n")
                raise SystemExit(2) from None
        return str(_local().read(path))

    @classmethod
    def write(cls, buf: str, path: str) -> object:
        return _local().write(buf, path)

    @classmethod
    def listdir(cls, path: str) -> object:
        return _local().listdir(path)

    @classmethod
    def pretty_path(cls, path: str) -> object:
        return _local().pretty_path(path)


def _local() -> Any:
    # Papermill's own handler instance, so the working folder it sets for a run applies here too.
    from papermill.iorw import papermill_io

    return papermill_io.get_handler("local")
