"""What a long run says while it works: in the notebook's output, and on the terminal papermill runs
in (headless, papermill shows no cell output, so a wait of minutes would otherwise look like a hang)."""
from __future__ import annotations

import os
import sys

from .yaml_files import one_line

PROGRESS_SECONDS = 30.0  # a wait says how it stands at least this often


def report(line: str) -> None:
    print(line, flush=True)
    to_terminal(line)


def to_terminal(line: str) -> None:
    """Write to the terminal that started the kernel (papermill's), not into the notebook: ipykernel
    keeps the original stderr's descriptor; outside a kernel there is no such terminal to add to."""
    fd = getattr(sys.stderr, "_original_stdstream_copy", None)
    if not isinstance(fd, int):
        # ipykernel does not redirect fd 2 in some runs (under pytest, for one): fd 2 is the terminal.
        if not type(sys.stderr).__module__.startswith("ipykernel") or sys.__stderr__ is None:
            return
        fd = sys.__stderr__.fileno()
    try:
        os.write(fd, (one_line(line) + "\n").encode())
    except OSError:
        pass
