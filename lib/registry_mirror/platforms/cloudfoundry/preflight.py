"""Before any change on Cloud Foundry: credentials, login, the space, no deployment in flight, what the
foundation allows (capabilities), the upstream and the registry image. Read-only; any failure stops
the runbook before a change."""
from __future__ import annotations

from collections.abc import Callable

from .capabilities import capability_checks
from .push.deployment import deployment_in_flight
from .push.package import image_pull_password
from .session import CfApiError, CfCredentials, CfSession
from .space import APPS, Space
from ...credentials import upstream_password
from ...errors import PreflightError, RunbookError
from ...image_refs import resolve_digest
from ...parameters import Settings
from ...preflight import Check, PreflightReport


def cf_preflight(settings: Settings, *, given: CfSession | None, space: Callable[[], Space]) -> PreflightReport:
    """`given`: the session the platform was opened with (None: credentials come from the environment);
    `space`: opens the session and the space, only once the credentials are known to be there."""
    checks: list[Check] = []
    try:
        if given is None:
            CfCredentials.from_env()
        checks.append(Check("CF credentials", True, "present in the environment" if given is None
                            else f"given with the session ({given.credentials.name})"))
    except RunbookError as exc:  # SecretMissingError: which variables to set
        return PreflightReport([Check("CF credentials", False, str(exc))])
    try:
        where = space()
        where.cc.session.login()
        checks.append(Check("CF login", True, f"{where.cf.api} as {where.cc.session.credentials.name}"))
        checks += _space_checks(where)
    except (PreflightError, CfApiError) as exc:
        checks.append(Check("CF API", False, str(exc)))
    try:
        upstream_password(settings)
        checks.append(Check("upstream credentials", True,
                            "configured" if settings.upstream.username else "anonymous (lower rate limit)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("upstream credentials", False, str(exc)))
    if settings.registry.image_pull_password_env:
        try:
            image_pull_password(settings)
            checks.append(Check("registry image pull credentials", True,
                                f"{settings.registry.image_pull_username}, password from the environment"))
        except RunbookError as exc:
            checks.append(Check("registry image pull credentials", False, str(exc)))
    return PreflightReport(checks + _image_checks(settings))


def _space_checks(where: Space) -> list[Check]:
    space = where.find()
    checks = [Check("org and space", space is not None, where.where + ("" if space else " not found"))]
    if space is None:
        return checks
    apps = {component: where.app(component) for component in APPS}
    for component in APPS:
        in_flight = deployment_in_flight(where, (component,))
        checks.append(Check(f"no deployment active ({where.app_name(component)})", in_flight is None,
                            in_flight or "none"))
    service = where.cc.service_instance(space["guid"], where.cf.s3_service_instance)
    return checks + capability_checks(where.cc, where.settings, space, first_deploy=not any(apps.values()),
                                      service_exists=service is not None)


def _image_checks(settings: Settings) -> list[Check]:
    # The registry panics at start when it cannot reach its upstream (distribution #4038), and a
    # digest that does not resolve would fail the build: check both from here first.
    image = settings.registry.image or ""
    try:
        found = resolve_digest(settings.upstream.url, image)
        return [Check("upstream reachable", True, settings.upstream.url),
                Check("registry image digest resolves", found, image if found else f"{image} not found")]
    except Exception as exc:  # noqa: BLE001 - an unreachable upstream is a failed check
        return [Check("upstream reachable", False, f"{settings.upstream.url}: {exc}")]
