"""How a running config differs from what the parameters render, told without its text.

Configs hold the private allow-list, so drift is reported as counts and line numbers only.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigDrift:
    name: str
    changed_lines: tuple[int, ...]  # line numbers in the running config (1-based), deletions at their place
    edited_lines: int  # lines removed from the rendering plus lines added to it

    @property
    def identical(self) -> bool:
        return self.edited_lines == 0

    def describe(self) -> str:
        if self.identical:
            return f"{self.name}: identical"
        return f"{self.name}: {self.edited_lines} line(s) differ, at lines {_ranges(self.changed_lines)}"


def config_drift(name: str, rendered: str, running: str | None) -> ConfigDrift:
    """Compare `running` (None: not there at all) with `rendered`, line by line."""
    wanted = rendered.splitlines()
    if running is None:
        return ConfigDrift(name, tuple(range(1, len(wanted) + 1)), len(wanted) or 1)
    seen = running.splitlines()
    edits = [op for op in difflib.SequenceMatcher(a=wanted, b=seen, autojunk=False).get_opcodes() if op[0] != "equal"]
    changed = sorted({j + 1 for _, _, _, j1, j2 in edits for j in range(j1, max(j2, j1 + 1))})
    return ConfigDrift(name, tuple(changed), sum((i2 - i1) + (j2 - j1) for _, i1, i2, j1, j2 in edits))


def _ranges(numbers: tuple[int, ...]) -> str:
    """1,2,3,7 -> '1-3, 7': short even when a whole block moved."""
    parts: list[str] = []
    for n in numbers:
        if parts and n == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return ", ".join(parts[:8]) + (f" and {len(parts) - 8} more" if len(parts) > 8 else "")
