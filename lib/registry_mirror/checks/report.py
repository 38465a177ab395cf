"""Check results as data (a dataclass per check, a DataFrame for all) and their verdict."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from ..errors import VerificationError
from .catalogue import CHECK_ORDER, NEXT, PROVES

Status = Literal["pass", "fail", "warn", "n/a"]
CheckFn = Callable[[], "PolicyCheck"]


@dataclass(frozen=True)
class PolicyCheck:
    id: str
    proves: str
    how: str
    expected: str
    observed: str
    status: Status
    next_step: str = ""


@dataclass(frozen=True)
class PolicyReport:
    platform: str
    checks: list[PolicyCheck]

    @property
    def failed(self) -> list[str]:
        return [c.id for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def count(self, status: Status) -> int:
        return sum(c.status == status for c in self.checks)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.checks])

    def verdict(self) -> str:
        summary = ", ".join(f"{self.count(s)} {s}" for s in ("pass", "fail", "warn", "n/a") if self.count(s))
        if self.failed:
            return f"NOT PROTECTED OR NOT WORKING: failed {', '.join(self.failed)} ({summary})"
        return f"ALL CHECKS PASSED on {self.platform} ({summary})"

    def write_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"platform": self.platform, "ok": self.ok, "failed": self.failed,
                                   "checks": [asdict(c) for c in self.checks]}, indent=2))
        return out

    def raise_for_failures(self) -> None:
        if self.failed:
            steps = "; ".join(f"{c.id}: {c.next_step}" for c in self.checks if c.status == "fail")
            raise VerificationError(f"policy checks failed: {', '.join(self.failed)} -- {steps}")

    def _repr_html_(self) -> str:
        frame = self.to_frame()[["id", "status", "proves", "observed", "next_step"]]
        return f"<p><b>{self.verdict()}</b></p>" + frame.to_html(index=False)

    def __repr__(self) -> str:
        return self.verdict() + "\n" + self.to_frame()[["id", "status", "observed"]].to_string(index=False)


def judged(check_id: str, how: str, expected: str, observed: str, ok: bool | None) -> PolicyCheck:
    """A result: `ok` True passes, False fails (with the catalogue's next step), None warns."""
    status: Status = "pass" if ok else ("warn" if ok is None else "fail")
    return PolicyCheck(check_id, PROVES[check_id], how, expected, observed, status,
                       NEXT.get(check_id, "") if ok is False else "")


def not_applicable(check_id: str, why: str) -> PolicyCheck:
    return PolicyCheck(check_id, PROVES[check_id], "-", "-", why, "n/a")


def run_checks(platform: str, planned: dict[str, CheckFn]) -> PolicyReport:
    """Run each check in catalogue order; one that raises is a failure with the error as its evidence."""
    missing = [c for c in CHECK_ORDER if c not in planned]
    if missing:
        raise ValueError(f"the {platform} checks lack {', '.join(missing)}")  # a defect, not a verdict
    results = []
    for check_id in CHECK_ORDER:
        try:
            results.append(planned[check_id]())
        except Exception as exc:  # noqa: BLE001 - the error is the observation
            results.append(PolicyCheck(check_id, PROVES[check_id], "(the check itself failed)", "a result",
                                       f"error: {exc.__class__.__name__}: {str(exc)[:300]}", "fail",
                                       "read the error; fix what it names, then run the checks again"))
    return PolicyReport(platform, results)
