"""The secrets the mirror runs with, set in its environment (never in a manifest or a parameter).

Credentials live in the app's environment, which every revision captures; so a rollback deploys a
revision's configuration with today's credentials (CREDENTIAL_VARS), never the revision's own.
"""
from __future__ import annotations

import secrets

from ..resources import CloudController, Resource
from ..services import S3Key
from ....credentials import upstream_password
from ....parameters import Settings
from ....registry_config import SECRET_ENV

CREDENTIAL_VARS = frozenset(SECRET_ENV.values())  # never rolled back: a revision's copies may be revoked


def secret_env(cc: CloudController, settings: Settings, key: S3Key | None, app: Resource | None) -> dict[str, str]:
    """The mirror's secret variables: the S3 key, the upstream password, the upload-signing secret."""
    if key is None:
        return {}
    env = {"REGISTRY_STORAGE_S3_ACCESSKEY": key.access_key.reveal(),
           "REGISTRY_STORAGE_S3_SECRETKEY": key.secret_key.reveal()}
    password = upstream_password(settings)
    if password is not None:
        env["REGISTRY_PROXY_PASSWORD"] = password.reveal()
    # Signs upload state: every instance must hold the same one, and a new one on every deploy
    # would make every deploy a change. Kept once made.
    current = cc.app_env(app).get("REGISTRY_HTTP_SECRET") if app is not None else None
    env["REGISTRY_HTTP_SECRET"] = current or secrets.token_urlsafe(30)
    return env


def set_env(cc: CloudController, app: Resource, variables: dict[str, str | None]) -> str:
    """PATCH the variables (None removes one); says how many were set, never their values."""
    cc.update_app_env(app, variables)
    return f"{sum(v is not None for v in variables.values())} variable(s) set"
