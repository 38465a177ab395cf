"""What drill.ipynb calls: one fault of `faults`, checked before anything changes."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import ParameterError
from ..platforms.local.stack import LocalPlatform
from ..parameters import Settings
from . import faults


@dataclass(frozen=True)
class Drill:
    stack: LocalPlatform
    fault: str

    def catalogue(self) -> pd.DataFrame:
        return faults.catalogue()

    def inject(self, *, dry_run: bool) -> str:
        if not self.fault:
            return "no fault chosen (parameter 'fault'): nothing to inject"
        return faults.inject(self.stack, self.fault, dry_run=dry_run)

    def active(self) -> list[str]:
        return faults.active_faults(self.stack)

    def undo(self, *, dry_run: bool) -> str:
        return faults.undo(self.stack, dry_run=dry_run)


def open_drill(settings: Settings, *, fault: str) -> Drill:
    if settings.platform != "local":
        raise ParameterError("drill.ipynb breaks things on purpose: it runs on the local platform only "
                             f"(platform is {settings.platform!r})")
    if fault and fault not in faults.FAULTS:
        raise ParameterError(f"parameter 'fault' must be one of {', '.join(faults.FAULTS)} or empty, got {fault!r}")
    return Drill(LocalPlatform(settings, settings.load_security_rules()), fault)
