"""What drill.ipynb calls: one fault of the platform's fault library, checked before anything changes."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import ParameterError
from ..parameters import Settings, did_you_mean
from ..platforms.base import FaultLibrary
from ..platforms.registry import platform_for


@dataclass(frozen=True)
class Drill:
    faults: FaultLibrary
    fault: str

    def catalogue(self) -> pd.DataFrame:
        return self.faults.catalogue()

    def inject(self, *, dry_run: bool) -> str:
        if not self.fault:
            return "no fault chosen (parameter 'fault'): nothing to inject"
        return self.faults.inject(self.fault, dry_run=dry_run)

    def active(self) -> list[str]:
        return self.faults.active()

    def undo(self, *, dry_run: bool) -> str:
        return self.faults.undo(dry_run=dry_run)


def open_drill(settings: Settings, *, fault: str) -> Drill:
    """The platform's faults (a platform where drills cannot run refuses here), and `fault` checked."""
    library = platform_for(settings, settings.load_security_rules()).faults()
    if fault and fault not in library.names:
        raise ParameterError(f"parameter 'fault' must be one of {', '.join(library.names)} or empty, got {fault!r}"
                             + did_you_mean(fault, library.names))
    return Drill(library, fault)
