"""Preconditions as data: each check says what it looked at and what it saw."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class PreflightReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)

    def raise_for_failures(self) -> None:
        if not self.ok:
            from .errors import PreflightError

            raise PreflightError(f"preflight failed, nothing was changed: {self.failures()}")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"check": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks])

    def verdict(self) -> str:
        return "PREFLIGHT OK" if self.ok else f"PREFLIGHT FAILED: {self.failures()}"

    def _repr_html_(self) -> str:
        return f"<p><b>{self.verdict()}</b></p>" + self.to_frame().to_html(index=False)

    def __repr__(self) -> str:
        return self.verdict() + "\n" + self.to_frame().to_string(index=False)
