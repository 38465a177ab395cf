"""Where a local stack keeps everything, under its state folder (`local.state_dir`): state, configs,
secrets, logs, data, client configs; and the sockets, in the folder the nginx workers may reach."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ...rendering import FANOUT_SOCKET, MIRROR_PASS_SOCKET
from .worker_access import WorkerAccess, worker_access


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def run(self) -> Path:
        return self.root / "run"  # 0700: pid files and SeaweedFS's runtime files

    @cached_property
    def access(self) -> WorkerAccess:
        """Who the nginx workers run as, and the folder of sockets they share with the mirrors."""
        return worker_access(self.root)

    @property
    def shared(self) -> Path:
        return self.access.shared

    @property
    def blob_cache(self) -> Path:
        return self.shared / "proxy-blob-cache"

    @property
    def manifest_cache(self) -> Path:
        return self.shared / "proxy-manifest-cache"

    @property
    def nginx_temp(self) -> Path:
        return self.shared / "nginx-temp"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def secrets_file(self) -> Path:
        return self.secrets / "stack-secrets.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def client_dir(self) -> Path:
        return self.root / "client"

    @property
    def proxy_socket(self) -> Path:
        return self.shared / "proxy.sock"

    def mirror_socket(self, name: str) -> Path:
        return self.shared / f"{name}.sock"

    @property
    def fanout_socket(self) -> Path:
        return self.shared / FANOUT_SOCKET

    @property
    def mirror_pass_socket(self) -> Path:
        """The proxy's own way to the mirrors, for blob-fanout."""
        return self.shared / MIRROR_PASS_SOCKET

    @property
    def fanout_spool(self) -> Path:
        """Blobs in flight through blob-fanout (each unlinked at once: nothing stays here)."""
        return self.data / "blob-fanout"

    def nginx_prefix(self, name: str) -> Path:
        return self.root / "nginx" / name

    @property
    def private(self) -> tuple[Path, ...]:
        """The stack's own folders: nobody but the user running it may enter or read them. The rendered
        proxy config holds the allow-list, the logs hold client addresses and what they pulled, data
        holds every cached layer."""
        return (self.config, self.logs, self.data, self.run, self.secrets, self.root / "nginx")

    def create(self) -> None:
        fresh = not self.state_file.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        self.client_dir.mkdir(exist_ok=True)
        for d in self.private:
            d.mkdir(exist_ok=True)
        for name in ("proxy", "router"):
            self.nginx_prefix(name).mkdir(parents=True, exist_ok=True)
        self.seal()
        self.access.prepare(self.root, fresh=fresh)

    def seal(self) -> None:
        """The stack's own files for its user alone: 0700 folders, files without group or other bits.
        Run at the start and the end of every deploy, so what the programs created meanwhile (nginx
        opens its logs 0644) and the files of a stack deployed before this rule are closed too."""
        # Others may pass through (to client/, whose configs are for users) but not list it.
        self.root.chmod(0o711)
        for top in self.private:
            if top.exists():
                for path in [top, *top.rglob("*")]:
                    _close(path)
        if self.state_file.exists():
            _close(self.state_file)

    def exposed(self) -> list[str]:
        """What of the stack's own files another local user could list, read or enter (empty: nothing).
        Below a folder closed to others nothing is reachable, whatever its own mode; in an open one,
        its open files are named too."""
        found = [f"{self.root} is listable by others"] if self.root.stat().st_mode & 0o044 else []
        for top in self.private:
            if not top.exists() or not top.stat().st_mode & 0o077:
                continue
            for path in [top, *(top.iterdir() if top.stat().st_mode & 0o011 else ())]:
                if not path.is_symlink() and path.lstat().st_mode & 0o077:
                    found.append(f"{path.relative_to(self.root)} is open to others "
                                 f"({oct(path.lstat().st_mode & 0o777)})")
        return found


def _close(path: Path) -> None:
    if path.is_symlink():
        return
    mode = path.lstat().st_mode
    if mode & 0o077:
        path.chmod(mode & 0o700)
