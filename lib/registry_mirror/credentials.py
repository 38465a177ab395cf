"""Secrets: read from the environment (or generated for the local stack), never shown.

A `Secret` prints as its name only, so a secret that reaches a notebook output, a log line or an
exception message by accident shows up as `<secret DOCKERHUB_TOKEN>`, not as its value.
"""
from __future__ import annotations

import json
import os
import secrets as _random
from dataclasses import dataclass
from pathlib import Path

from .errors import SecretMissingError
from .parameters import Settings


@dataclass(frozen=True)
class Secret:
    name: str
    _value: str

    def reveal(self) -> str:
        """The value, for handing to a process environment or an HTTP client; never for display."""
        return self._value

    def __repr__(self) -> str:
        return f"<secret {self.name}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


def secret_from_env(variable: str, *, purpose: str) -> Secret:
    value = os.environ.get(variable, "")
    if not value:
        raise SecretMissingError(f"environment variable {variable} ({purpose}) is not set")
    return Secret(variable, value)


def upstream_password(settings: Settings) -> Secret | None:
    """The upstream registry's password or token, when the mirror authenticates upstream."""
    up = settings.upstream
    if up.password is not None:
        return Secret("upstream.password", up.password)
    if up.password_env is not None:
        return secret_from_env(up.password_env, purpose=f"password of upstream user {up.username}")
    return None


@dataclass(frozen=True)
class LocalStackSecrets:
    """Credentials the local stack makes for itself: its S3 identity and the registries' http secret."""

    s3_access_key: Secret
    s3_secret_key: Secret
    http_secret: Secret

    @classmethod
    def load_or_create(cls, path: Path, *, create: bool) -> LocalStackSecrets:
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = {"s3_access_key": "LOCAL" + _random.token_hex(8).upper(),
                    "s3_secret_key": _random.token_urlsafe(30),
                    "http_secret": _random.token_urlsafe(30)}
            if create:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f)
        return cls(*(Secret(f"local {k}", data[k]) for k in ("s3_access_key", "s3_secret_key", "http_secret")))
