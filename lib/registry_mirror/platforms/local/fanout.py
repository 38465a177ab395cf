"""blob-fanout on the local stack: started from the binary of the checkout's source, on a socket in the
folder the nginx workers share (its group may connect, nobody else), spooling to the stack's data
folder, asking the mirrors through the proxy's own way to them."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

from ...blob_fanout import DRAIN_SECONDS, HEALTH_PATH, fanout_argv, fanout_binary
from ...errors import ComponentNotReady
from ...processes import ProcessRecord, start_process, wait_until
from ...unix_http import unix_request
from .daemons import daemon_env, died
from .paths import StackPaths
from .worker_access import MIRROR_UMASK

FANOUT = "blob-fanout"
# Seconds blob-fanout may take to exit after its drain window before it is killed.
FANOUT_STOP_SECONDS = DRAIN_SECONDS + 3


def fanout_command(paths: StackPaths) -> list[str]:
    return fanout_argv(fanout_binary(), listen=f"unix:{paths.fanout_socket}",
                       upstream=f"unix:{paths.mirror_pass_socket}", spool=str(paths.fanout_spool))


def fanout_fingerprint(paths: StackPaths) -> str:
    """Changes with the command line, which names the binary of the current source."""
    return hashlib.sha256("\0".join(fanout_command(paths)).encode()).hexdigest()[:16]


def start_fanout(paths: StackPaths, *, register: Callable[[ProcessRecord], None], timeout: float) -> ProcessRecord:
    paths.fanout_spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    # umask 007 as the mirrors: what it creates is for the workers' group at most (see worker_access).
    record = start_process(FANOUT, fanout_command(paths), log=paths.logs / f"{FANOUT}.log", env=daemon_env(),
                           umask=MIRROR_UMASK)
    register(record)
    try:
        wait_until(lambda: fanout_healthy(paths), timeout=timeout, what=f"{FANOUT} health check",
                   abort=died(record))
    except TimeoutError as exc:
        raise ComponentNotReady(FANOUT, str(exc), record.log) from None
    return record


def fanout_healthy(paths: StackPaths) -> bool:
    try:
        return unix_request(str(paths.fanout_socket), "GET", HEALTH_PATH, timeout=2).status == 200
    except OSError:
        return False
