"""What a deploy did (or, in a dry run, would do): data first, then a table."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

Status = Literal["planned", "done", "unchanged", "failed", "skipped"]


@dataclass(frozen=True)
class DeployStep:
    component: str
    action: str
    status: Status
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DeployReport:
    platform: str
    dry_run: bool
    action: Literal["deploy", "down"] = "deploy"
    steps: list[DeployStep] = field(default_factory=list)
    endpoint: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return any(s.status == "done" for s in self.steps)

    def changes(self) -> str:
        """The steps that changed (or in a dry run would change) something, in one line."""
        changed = [f"{s.component}: {s.action}" for s in self.steps if s.status in ("done", "planned")]
        return "; ".join(changed) or "nothing to change"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(s) for s in self.steps],
                            columns=["component", "action", "status", "detail", "seconds"])

    def verdict(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        if self.dry_run:
            return f"DRY RUN: {sum(s.status == 'planned' for s in self.steps)} step(s) would change the stack"
        if self.action == "down":
            return f"STOPPED: {sum(s.status == 'done' for s in self.steps)} process(es)"
        if not self.changed:
            return f"UNCHANGED: the stack already matched the parameters; endpoint {self.endpoint}"
        return f"DEPLOYED: endpoint {self.endpoint}"

    def _repr_html_(self) -> str:
        return f"<p><b>{self.verdict()}</b></p>" + self.to_frame().to_html(index=False)

    def __repr__(self) -> str:
        return self.verdict() + "\n" + self.to_frame().to_string(index=False)


class Unchanged(str):
    """Returned by a step that looked and found nothing to change (an ensure that was already true)."""


class StepRecorder:
    """Runs a step, or in a dry run only records it: one code path for plan and apply."""

    def __init__(self, report: DeployReport) -> None:
        self.report = report

    @property
    def dry_run(self) -> bool:
        return self.report.dry_run

    def unchanged(self, component: str, action: str, detail: str = "") -> None:
        self.report.steps.append(DeployStep(component, action, "unchanged", detail))

    def run(self, component: str, action: str, apply: Callable[[], str | None], *, detail: str = "") -> None:
        if self.dry_run:
            self.report.steps.append(DeployStep(component, action, "planned", detail))
            return
        with self._timed(component, action, detail) as result:
            result.append(apply() or detail)

    @contextmanager
    def _timed(self, component: str, action: str, detail: str) -> Iterator[list[str]]:
        start = time.monotonic()
        result: list[str] = []
        try:
            yield result
        except Exception as exc:
            self.report.steps.append(DeployStep(component, action, "failed", str(exc)[:500],
                                                round(time.monotonic() - start, 2)))
            raise
        outcome = result[0] if result else detail
        status: Status = "unchanged" if isinstance(outcome, Unchanged) else "done"
        self.report.steps.append(DeployStep(component, action, status, str(outcome),
                                            round(time.monotonic() - start, 2)))
