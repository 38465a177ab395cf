"""The upstream layer, the same on both platforms: reachable, the mirror's account gets a token, and
the pull allowance Docker Hub states in its headers (read with a HEAD, which is not a counted pull)."""
from __future__ import annotations

import requests

from ..checks.catalogue import DOCKER_HUB
from ..checks.client import MANIFEST_ACCEPT
from ..credentials import upstream_password
from ..parameters import Settings
from ..registry_auth import bearer_token
from .triage import Facts, Finding

PROBE_TIMEOUT = 10.0


def upstream_findings(settings: Settings, facts: Facts, repository: str, tag: str) -> list[Finding]:
    up = settings.upstream
    url = up.url.rstrip("/")
    probe = (repository, tag)
    facts.probe_image = f"{repository}:{tag}"
    if url == DOCKER_HUB:  # the repository Docker Hub documents for reading the allowance
        repository, tag = "ratelimitpreview/test", "latest"
    try:
        status = requests.get(f"{url}/v2/", timeout=PROBE_TIMEOUT).status_code
        facts.upstream_reachable = status in (200, 401)
        found = [Finding("upstream", f"GET {url}/v2/", facts.upstream_reachable, str(status))]
    except requests.RequestException as exc:
        facts.upstream_reachable = False
        return [Finding("upstream", f"GET {url}/v2/", False, f"no answer: {exc.__class__.__name__}")]
    password = upstream_password(settings)
    try:
        token = bearer_token(url, up.username, password.reveal() if password else None,
                             scope=f"repository:{repository}:pull", timeout=PROBE_TIMEOUT)
        facts.upstream_auth_ok = True
        found.append(Finding("upstream", "token for the mirror's account", True,
                             "issued" if token else "no token service"))
    except requests.RequestException as exc:
        facts.upstream_auth_ok = False
        found.append(Finding("upstream", "token for the mirror's account", False, clip(str(exc))))
        return found
    headers = {"Accept": MANIFEST_ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        resp = requests.head(f"{url}/v2/{repository}/manifests/{tag}", headers=headers, timeout=PROBE_TIMEOUT)
    except requests.RequestException as exc:
        found.append(Finding("upstream", f"HEAD {repository}:{tag}", False, f"no answer: {exc.__class__.__name__}"))
        return found
    limit, remaining = allowance(resp.headers.get("ratelimit-limit")), allowance(resp.headers.get("ratelimit-remaining"))
    facts.upstream_limit, facts.upstream_remaining = limit, remaining
    found.append(Finding("upstream", f"HEAD {repository}:{tag} (not a counted pull)", resp.status_code == 200,
                         str(resp.status_code)))
    found.append(Finding("upstream", "pull allowance (ratelimit headers)", remaining != 0,
                         "no limit stated" if remaining is None else f"{remaining} of {limit} left"))
    if (repository, tag) == probe:
        facts.probe_upstream_status = resp.status_code
    else:
        found.append(_probe_head(url, up.username, password.reveal() if password else None, *probe, facts))
    return found


def _probe_head(url: str, username: str | None, password: str | None, repository: str, tag: str,
                facts: Facts) -> Finding:
    """Does the upstream have the probe image at all? A probe it lacks is a wrong parameter, not a
    broken layer (HEAD: a version check, not a counted pull)."""
    check = f"HEAD {repository}:{tag}, the probe image (not a counted pull)"
    try:
        token = bearer_token(url, username, password, scope=f"repository:{repository}:pull", timeout=PROBE_TIMEOUT)
        headers = {"Accept": MANIFEST_ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
        status = requests.head(f"{url}/v2/{repository}/manifests/{tag}", headers=headers,
                               timeout=PROBE_TIMEOUT).status_code
    except requests.RequestException as exc:
        return Finding("upstream", check, None, f"no answer: {exc.__class__.__name__}")
    facts.probe_upstream_status = status
    return Finding("upstream", check, status == 200, str(status))


def allowance(value: str | None) -> int | None:
    """`100;w=21600` -> 100."""
    try:
        return int(value.split(";")[0]) if value else None
    except ValueError:
        return None


def clip(text: str, width: int = 240) -> str:
    return text if len(text) <= width else text[:width] + "..."
