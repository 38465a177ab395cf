"""Who the local nginx workers run as, and the one folder they may reach.

nginx's workers parse every client request, so they must not run as root. When the stack runs as
root the workers run as the system user `registry-mirror` (created by `make bootstrap`); the mirror
sockets, the proxy socket, nginx's temp folders and the proxy's blob cache then live in a folder
that only root and that user's group can enter. It cannot live under the stack's own folder:
operators and pytest keep that under 0700 parents the workers could not traverse. Mode 2750 makes
every socket created inside inherit the group, and the mirrors start with umask 007, so no other
local user can connect to them.

A stack run by an ordinary user needs none of this: its workers already run as that user, and the
sockets stay in the stack's own 0700 `run/` folder.
"""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

WORKER_USER = "registry-mirror"
SHARED_PARENT = Path("/var/lib/registry-mirror")  # beside its sockets, as /var/lib/mysql does
OWNER_FILE = "stack-root"
MIRROR_UMASK = 0o007


class WorkerUserMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(f"nginx workers must not run as root, and the system user {WORKER_USER} they run as "
                         "does not exist: run `make bootstrap` to create it")


@dataclass(frozen=True)
class WorkerAccess:
    """The nginx `user` (None: the invoking user) and the folder its workers share with the mirrors."""

    user: str | None
    gid: int | None
    shared: Path

    @property
    def mode(self) -> int:
        return 0o2750 if self.gid is not None else 0o700

    def prepare(self, stack_root: Path) -> None:
        """Create the shared folder with its owner and mode; record which stack it belongs to."""
        if self.gid is not None:
            SHARED_PARENT.mkdir(mode=0o755, parents=True, exist_ok=True)
            _collect_orphans()
        self.shared.mkdir(parents=True, exist_ok=True)
        if self.gid is not None:
            os.chown(self.shared, os.geteuid(), self.gid)
            (self.shared / OWNER_FILE).write_text(str(stack_root.resolve()))
        self.shared.chmod(self.mode)

    def problems(self) -> list[str]:
        """Why another local user could reach the shared folder (empty: nobody but root and the workers)."""
        try:
            info = self.shared.stat()
        except FileNotFoundError:
            return []
        found = []
        if info.st_uid != os.geteuid():
            found.append(f"the socket folder belongs to uid {info.st_uid}")
        if info.st_mode & stat.S_IRWXO:
            found.append("the socket folder is open to other users")
        if self.gid is None and info.st_mode & stat.S_IRWXG:
            found.append("the socket folder is open to its group")
        if self.gid is not None and (info.st_gid != self.gid or info.st_mode & stat.S_IWGRP):
            found.append(f"the socket folder is not group {WORKER_USER}, read-only")
        return found


def worker_access(stack_root: Path, *, euid: int | None = None) -> WorkerAccess:
    """The access for a stack at `stack_root` run by `euid` (default: this process)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return WorkerAccess(user=None, gid=None, shared=stack_root / "run")
    try:
        gid = pwd.getpwnam(WORKER_USER).pw_gid
        grp.getgrgid(gid)
    except KeyError:
        raise WorkerUserMissing() from None
    digest = hashlib.sha256(str(stack_root.resolve()).encode()).hexdigest()[:16]
    return WorkerAccess(user=WORKER_USER, gid=gid, shared=SHARED_PARENT / digest)


def worker_uids(pids: list[int]) -> dict[int, int]:
    """The real uid of each live pid (from /proc, so it also sees processes we did not start)."""
    uids = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uids[pid] = int(line.split()[1])
        except OSError:
            continue
    return uids


def _collect_orphans() -> None:
    # A stack folder deleted by hand (or a pytest temp dir) leaves its shared folder behind.
    for folder in SHARED_PARENT.iterdir():
        owner = folder / OWNER_FILE
        if folder.is_dir() and owner.is_file() and not Path(owner.read_text().strip()).exists():
            shutil.rmtree(folder, ignore_errors=True)
