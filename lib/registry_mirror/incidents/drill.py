"""What drill.ipynb calls: one fault of `faults`, checked before anything changes."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import ParameterError
from ..parameters import Settings
from ..platforms.base import FaultLibrary
from ..platforms.local import LocalPlatform


@dataclass(frozen=True)
class Drill:
    library: FaultLibrary
    fault: str

    def catalogue(self) -> pd.DataFrame:
        return self.library.catalogue()

    def inject(self, *, dry_run: bool) -> str:
        if not self.fault:
            return "no fault chosen (parameter 'fault'): nothing to inject"
        return self.library.inject(self.fault, dry_run=dry_run)

    def active(self) -> list[str]:
        return self.library.active()

    def undo(self, *, dry_run: bool) -> str:
        return self.library.undo(dry_run=dry_run)


def open_drill(settings: Settings, *, fault: str) -> Drill:
    if settings.platform != "local":
        raise ParameterError("drill.ipynb breaks things on purpose: it runs on the local platform only "
                             f"(platform is {settings.platform!r})")
    library = LocalPlatform(settings, settings.load_security_rules()).faults()
    if fault and fault not in library.names:
        raise ParameterError(f"parameter 'fault' must be one of {', '.join(library.names)} or empty, got {fault!r}")
    return Drill(library, fault)
