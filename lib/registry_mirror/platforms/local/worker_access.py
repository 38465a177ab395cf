"""Who the local nginx workers run as, and the one folder they may reach.

nginx's workers parse every client request, so they must not run as root. When the stack runs as
root the workers run as a system user of that stack's own (`registry-mirror-<8 hex>`, named after
the stack's folder, with a group of the same name), created by the deploy and removed by `down`.
The mirror sockets, the proxy socket, nginx's temp folders and the proxy's caches live in a folder
only root and that group can enter. One user per stack, not one for all: the proxy trusts the
X-Forwarded-For of whoever connects to its socket, so a worker of one stack must not be able to
connect to another stack's sockets (a shared user could also signal or trace the other's workers).

The folder cannot live under the stack's own folder: operators and pytest keep that under 0700
parents the workers could not traverse. Mode 2750 makes every socket created inside inherit the
group, and the mirrors start with umask 007, so no other local user can connect to them.

A stack run by an ordinary user needs none of this: its workers already run as that user, and the
sockets stay in the stack's own 0700 `run/` folder.
"""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

WORKER_USER_PREFIX = "registry-mirror-"
SHARED_PARENT = Path("/var/lib/registry-mirror")  # beside its sockets, as /var/lib/mysql does
OWNER_FILE = "stack-root"
# In the stack's own folder: a folder deleted and made again at the same path is another stack, whose
# proxy must not find the old one's caches (its tags and blobs would be served as if fetched now).
STACK_ID_FILE = "stack-id"
MIRROR_UMASK = 0o007
# What nginx's workers write in the shared folder; handed to the current worker user at each deploy
# (a user removed by `down` and created again may come back with another uid).
WORKER_FOLDERS = ("proxy-blob-cache", "proxy-manifest-cache", "nginx-temp")


class WorkerUserMissing(RuntimeError):
    def __init__(self, user: str) -> None:
        super().__init__(f"the nginx workers' system user {user} could not be created (useradd failed): "
                         "nginx workers must not run as root")


@dataclass(frozen=True)
class WorkerAccess:
    """The nginx `user` (None: the invoking user) and the folder its workers share with the mirrors."""

    user: str | None
    shared: Path

    @property
    def gid(self) -> int | None:
        """The workers' group, once the deploy created it (None for an ordinary user's stack)."""
        if self.user is None:
            return None
        try:
            return grp.getgrnam(self.user).gr_gid
        except KeyError:
            return None

    @property
    def mode(self) -> int:
        return 0o2750 if self.user is not None else 0o700

    def prepare(self, stack_root: Path, *, fresh: bool = False) -> None:
        """Create the workers' user and the shared folder with its owner and mode; record which stack
        the folder belongs to. `fresh`: the stack has never been deployed."""
        if self.user is not None:
            SHARED_PARENT.mkdir(mode=0o755, parents=True, exist_ok=True)
            _collect_orphans()
            ensure_system_user(self.user)
        owner, recorded = _owner_record(stack_root), _recorded_owner(self.shared)
        # A record without an identity was written before identities: this stack's, unless the stack
        # has never been deployed (no state yet), when it can only be a removed one's.
        foreign = recorded != owner if recorded and "\n" in recorded else recorded is not None and fresh
        if self.user is not None and foreign:
            shutil.rmtree(self.shared)  # left by an earlier stack at this path
        self.shared.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.shared, 0, entry.pw_gid)
            (self.shared / OWNER_FILE).write_text(owner)
            for name in WORKER_FOLDERS:
                _hand_over(self.shared / name, entry.pw_uid, entry.pw_gid)
        self.shared.chmod(self.mode)

    def release(self) -> None:
        """After `down`: the shared folder back to root alone, then the workers' user removed, so a
        uid or gid the system hands out later never owns what the stack left."""
        if self.user is None:
            return
        if self.shared.exists():
            _hand_over(self.shared, 0, 0)
            self.shared.chmod(0o700)
        remove_system_user(self.user)

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
        if self.user is None and info.st_mode & stat.S_IRWXG:
            found.append("the socket folder is open to its group")
        if self.user is not None and (info.st_gid != self.gid or info.st_mode & stat.S_IWGRP):
            found.append(f"the socket folder is not group {self.user}, read-only")
        if self.user is not None and self.gid is not None and grp.getgrgid(self.gid).gr_mem:
            found.append(f"group {self.user} has members besides its workers: {grp.getgrgid(self.gid).gr_mem}")
        return found


def worker_access(stack_root: Path, *, euid: int | None = None) -> WorkerAccess:
    """The access for a stack at `stack_root` run by `euid` (default: this process)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return WorkerAccess(user=None, shared=stack_root / "run")
    digest = hashlib.sha256(str(stack_root.resolve()).encode()).hexdigest()[:16]
    return WorkerAccess(user=WORKER_USER_PREFIX + digest[:8], shared=SHARED_PARENT / digest)


def ensure_system_user(name: str) -> None:
    """A system user and group `name` (no login, no home); nothing when it exists."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                             "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True, timeout=30,
                            check=False)
    # 9: created meanwhile by a concurrent deploy of the same stack.
    if result.returncode not in (0, 9):
        raise WorkerUserMissing(name) from RuntimeError(result.stderr.strip())


def remove_system_user(name: str) -> None:
    """Remove user `name` and its group; nothing when it is gone."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", name], capture_output=True, text=True, timeout=30, check=False)


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


def _hand_over(folder: Path, uid: int, gid: int) -> None:
    """Make `uid:gid` own `folder` and everything in it (without following links)."""
    if not folder.exists():
        return
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)


def _collect_orphans() -> None:
    # A stack folder deleted by hand (or a pytest temp dir) leaves its shared folder and user behind.
    for folder in SHARED_PARENT.iterdir():
        recorded = _recorded_owner(folder) if folder.is_dir() else None
        if recorded is None:
            continue
        root = Path(recorded.split("\n", 1)[0])
        if not root.exists() or ("\n" in recorded and (root / STACK_ID_FILE).exists()
                                 and _owner_record(root) != recorded):
            shutil.rmtree(folder, ignore_errors=True)
            remove_system_user(WORKER_USER_PREFIX + folder.name[:8])


def _owner_record(stack_root: Path) -> str:
    """The stack's path and its identity, made at its first deploy."""
    ident = stack_root / STACK_ID_FILE
    if not ident.exists():
        stack_root.mkdir(parents=True, exist_ok=True)
        ident.write_text(secrets.token_hex(16) + "\n")
    return f"{stack_root.resolve()}\n{ident.read_text().strip()}"


def _recorded_owner(shared: Path) -> str | None:
    try:
        return (shared / OWNER_FILE).read_text().strip()
    except FileNotFoundError:
        return None
