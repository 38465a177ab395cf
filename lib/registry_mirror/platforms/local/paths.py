"""Where a local stack keeps everything, under its state folder (`local.state_dir`): state, configs,
secrets, logs, data, client configs; and the sockets, in the folder the nginx workers may reach."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

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

    def nginx_prefix(self, name: str) -> Path:
        return self.root / "nginx" / name

    def create(self) -> None:
        for d in (self.root, self.config, self.logs, self.data, self.client_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.run, self.secrets):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        for name in ("proxy", "router"):
            self.nginx_prefix(name).mkdir(parents=True, exist_ok=True)
        self.access.prepare(self.root)
