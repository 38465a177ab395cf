"""What the local stack records (`<state_dir>/stack.json`: processes, instances in service,
fingerprints, the last deploy's outcome), and which lifecycle state that leaves the stack in.

The status is computed by pure functions: `process_table` from the state and what each process does
now, `condition` from the state and that table. A later notebook or `make down` reads the same file
to find and stop what an earlier one started.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ...errors import DeployError
from ...processes import ProcessRecord
from ..base import PlatformStatus
from .seaweedfs import SEAWEEDFS_PARTS

# Clients' side first, storage last; SeaweedFS's parts in the reverse of their start order.
# The Docker Hub stand-in's processes: its front (the listener), the registry, the token service.
HUB_PARTS = ("hub-front", "hub", "hub-token")
STOP_ORDER = ("router", "proxy", "blob-fanout", "mirror", *HUB_PARTS, *reversed(SEAWEEDFS_PARTS), "s3")
PROCESS_COLUMNS = ["component", "pid", "running", "ready", "in_service", "log"]


@dataclass
class StackState:
    generation: int = 0
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    mirrors: list[str] = field(default_factory=list)  # instances in the proxy's upstream, in order
    fingerprints: dict[str, str] = field(default_factory=dict)
    last_deploy: dict[str, object] = field(default_factory=dict)  # {"ok": bool, "failed_at", "error"}

    def running(self, name: str) -> bool:
        rec = self.processes.get(name)
        return rec is not None and rec.alive()

    @classmethod
    def load(cls, path: Path) -> StackState:
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(generation=int(data["generation"]),
                       processes={k: ProcessRecord.from_json(v) for k, v in data["processes"].items()},
                       mirrors=list(data["mirrors"]), fingerprints=dict(data["fingerprints"]),
                       last_deploy=dict(data.get("last_deploy", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DeployError(f"{path} is not a stack state this library wrote ({exc.__class__.__name__}); "
                              "stop the processes it named by hand, then move the file away") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)  # the stack's own, like everything under its folder but client/
        tmp.write_text(json.dumps({"generation": self.generation,
                                   "processes": {k: v.to_json() for k, v in self.processes.items()},
                                   "mirrors": self.mirrors, "fingerprints": self.fingerprints,
                                   "last_deploy": self.last_deploy}, indent=2))
        tmp.replace(path)


def is_mirror(name: str) -> bool:
    """Mirror instances are recorded as `mirror-<generation>-<index>`."""
    return name.startswith("mirror-")


def stop_rank(name: str) -> int:
    """Where a process of the stack comes in the stop order."""
    role = "mirror" if is_mirror(name) else name
    return STOP_ORDER.index(role) if role in STOP_ORDER else len(STOP_ORDER)


def process_table(state: StackState, *, running: Callable[[ProcessRecord], bool],
                  ready: Callable[[str], bool]) -> pd.DataFrame:
    """One row per recorded process, storage first: does it run (`running(record)`), does it answer
    (`ready(name)`, asked only of a running one), is it in service."""
    rows = []
    for name in sorted(state.processes, key=stop_rank, reverse=True):
        rec = state.processes[name]
        alive = running(rec)
        rows.append({"component": name, "pid": rec.pid, "running": alive, "ready": alive and ready(name),
                     "in_service": name in state.mirrors or not name.startswith("mirror"), "log": rec.log})
    return pd.DataFrame(rows, columns=PROCESS_COLUMNS)


def condition(state: StackState, processes: pd.DataFrame, *, has_state: bool, exposed: Sequence[str] = ()) -> str:
    """One line that tells apart every state a user can leave the stack in; its first words are the state."""
    if not has_state:
        return "NOT DEPLOYED: no stack state here; `make demo` deploys it"
    failed = state.last_deploy.get("ok") is False
    if processes.empty:
        if failed:
            return (f"STOPPED after a failed deploy (at {state.last_deploy.get('failed_at')}): "
                    "nothing runs; data kept")
        return "STOPPED: nothing runs; data and cache kept, `make demo` starts it again"
    down = list(processes.loc[~processes["running"], "component"])
    unready = list(processes.loc[processes["running"] & ~processes["ready"], "component"])
    if len(down) == len(processes):
        return ("GONE: every recorded process is gone (machine restarted or processes killed); "
                "`make demo` starts the stack again on its kept data")
    if failed:
        return (f"DEPLOY FAILED at {state.last_deploy.get('failed_at')}: {state.last_deploy.get('error')}; "
                f"{len(processes) - len(down)} process(es) left running for debugging, `make down` stops them")
    if down or unready:
        # S3 that runs but fails reads or writes has lost or refuses what the registry stored.
        named = [f"{n} (S3 answers errors for stored objects)" if n == "s3-gateway" else n for n in unready]
        parts = ([f"not running: {', '.join(down)}"] if down else []) + (
            [f"not answering: {', '.join(named)}"] if unready else [])
        return f"DEGRADED: {'; '.join(parts)}; `make demo` repairs it"
    if exposed:
        return (f"DEGRADED: open to other local users: {'; '.join(exposed[:3])}"
                f"{f' (and {len(exposed) - 3} more)' if len(exposed) > 3 else ''}; `make demo` closes it")
    return f"RUNNING: {len(processes)} processes, all answering"


def stack_status(state: StackState, processes: pd.DataFrame, *, has_state: bool,
                 exposed: Sequence[str] = ()) -> PlatformStatus:
    return PlatformStatus(condition=condition(state, processes, has_state=has_state, exposed=exposed),
                          processes=processes)
