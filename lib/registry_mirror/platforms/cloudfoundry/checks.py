"""The policy checks on Cloud Foundry: a client's view through the public route, and the API's view.

The client checks run from the machine that runs the runbook (the pipeline's worker), which the
allow-list must admit. Two checks need a client the policy refuses; no such client exists where
the runbook runs, so they say so (n/a) and the local platform proves them with real clients.
"""
from __future__ import annotations

import io
import zipfile

import requests

from .network import allows_proxy_to_mirror
from .push.routes import public_routes
from .resources import Resource
from .space import Component, Space
from ...checks import client
from ...checks.addresses import denied_example
from ...checks.catalogue import CHECK_IMAGE
from ...checks.report import CheckFn, PolicyCheck, judged, not_applicable
from ...checks.upstream import rate_limit_check, upstream_scope_check
from ...config_drift import config_drift
from ...image_refs import ImageRef
from ...registry_config import SECRET_ENV, S3Location
from ...rendering import MIRROR_PORT, render_cf_manifests
from ...security_rules import SecurityRules

NEEDS_REFUSED_CLIENT = ("needs a client the allow-list refuses; the runbook runs on an allowed worker "
                        "(the local platform proves this one with real clients)")


def cf_checks(space: Space, rules: SecurityRules, *, public_url: str = "", image: str = "") -> dict[str, CheckFn]:
    """Every check; `public_url` is how this machine reaches the proxy's public route (default https://route)."""
    cc, cf, settings = space.cc, space.cf, space.settings
    url = (public_url or f"https://{cf.proxy_route}").rstrip("/")
    image = image or CHECK_IMAGE["cloudfoundry"]
    session = requests.Session()  # the worker's own network settings (proxies, CA bundle) apply
    apps = {component: space.app(component) for component in ("registry", "proxy")}
    pulled: list[client.Pulled] = []

    def need(component: Component) -> Resource:
        app = apps[component]
        if app is None:
            raise LookupError(f"app {space.app_name(component)} does not exist in {space.where}")
        return app

    def env() -> dict[str, str]:
        return cc.app_env(need("registry"))

    def allowed_pull() -> PolicyCheck:
        result, api = client.pull_by_tag_and_digest(url, session, image)
        pulled.extend([api] if api else [])
        return result

    def push_refused_mirror() -> PolicyCheck:
        remote = env().get("REGISTRY_PROXY_REMOTEURL", "")
        return judged("push-refused-mirror", "REGISTRY_PROXY_REMOTEURL in the app env",
                      "set (proxy mode refuses pushes with 405 UNSUPPORTED)", remote or "not set", bool(remote))

    def not_exposed() -> PolicyCheck:
        urls = cc.route_urls(need("registry"))
        public = public_routes(urls)
        return judged("mirror-not-exposed", f"routes of {cf.mirror_app}", "only routes on apps.internal",
                      f"public route(s): {public}" if public else f"{len(urls)} route(s), all on apps.internal",
                      not public and bool(urls))

    def network_policy() -> PolicyCheck:
        mirror, proxy = need("registry"), apps["proxy"]
        policies = [p for p in cc.policies(mirror) if p.get("destination", {}).get("id") == mirror["guid"]]
        good = [p for p in policies if proxy is not None and allows_proxy_to_mirror(p, proxy, mirror)
                and p["destination"].get("ports", {}).get("start") == MIRROR_PORT]
        others = [p for p in policies if p not in good]
        observed = (f"{len(good)} proxy -> mirror tcp {MIRROR_PORT}" + (f"; {len(others)} other policy(ies) "
                    f"to the mirror from {sorted({p['source']['id'] for p in others})}" if others else ""))
        return judged("network-policy", "network policies whose destination is the mirror",
                      f"exactly proxy -> mirror tcp {MIRROR_PORT}", observed, len(good) == 1 and not others)

    def no_redirect() -> PolicyCheck:
        value = env().get("REGISTRY_STORAGE_REDIRECT_DISABLE", "")
        problems = [] if value == "true" else [f"REGISTRY_STORAGE_REDIRECT_DISABLE is {value or 'not set'}"]
        if pulled:
            through = client.blob_not_redirected(url, session, pulled[0].repository, pulled[0].first_layer)
            problems += [] if through.status == "pass" else [f"public route: {through.observed}"]
        else:
            problems.append("no layer to fetch: allowed-pull pulled nothing")
        return judged("no-s3-redirect", "REGISTRY_STORAGE_REDIRECT_DISABLE in the mirror's env; GET a cached layer "
                      "through the public route, redirects not followed", "true; 200 with the layer's bytes",
                      "; ".join(problems) or "true; bytes, digest verified", not problems)

    def pinned() -> PolicyCheck:
        droplet = cc.current_droplet(need("registry"))
        running = (droplet or {}).get("image") or ""
        want = settings.registry.image or ""
        return judged("image-pinned", "image of the mirror's current droplet", f"{want} (pinned by digest, as tested)",
                      running or "no droplet", same_pinned_image(running, want))

    def upstream_credentials() -> PolicyCheck:
        values = env()
        if not values.get("REGISTRY_PROXY_USERNAME"):
            return judged("upstream-credentials", "REGISTRY_PROXY_USERNAME/PASSWORD", "a user and a password",
                          "anonymous upstream pulls", None)
        has_password = "REGISTRY_PROXY_PASSWORD" in values
        return judged("upstream-credentials", "REGISTRY_PROXY_USERNAME and presence of REGISTRY_PROXY_PASSWORD",
                      "both set", f"user {values['REGISTRY_PROXY_USERNAME']}, password "
                      f"{'set' if has_password else 'MISSING'}", has_password)

    def config_matches() -> PolicyCheck:
        values = env()
        s3 = S3Location(values.get("REGISTRY_STORAGE_S3_BUCKET", ""), values.get("REGISTRY_STORAGE_S3_REGION", ""),
                        endpoint=values.get("REGISTRY_STORAGE_S3_REGIONENDPOINT"))
        manifests = render_cf_manifests(settings, rules, s3=s3)
        secret_names = set(SECRET_ENV.values())
        drift = [k for k, v in manifests.mirror_env.items() if values.get(k) != v]
        extra = [k for k in values if k.startswith("REGISTRY_") and k not in manifests.mirror_env
                 and k not in secret_names]
        instances = cc.web_process(need("registry")).get("instances")
        if instances != settings.registry.instances:
            drift.append(f"instances {instances} (params {settings.registry.instances})")
        drift += nginx_conf_drift(cc.current_package_bits(need("proxy")), manifests.proxy_nginx_conf)
        observed = "; ".join([f"differs: {', '.join(drift)}"] if drift else []
                             + ([f"not rendered: {', '.join(extra)}"] if extra else [])) or "identical"
        return judged("config-matches", "the mirror's REGISTRY_* env and instance count, and the nginx.conf in the "
                      "proxy's current package, against a fresh rendering (secrets excluded)", "identical",
                      observed, not drift and not extra)

    return {
        "allowed-api": lambda: client.allowed_api(url, session),
        "allowed-pull": allowed_pull,
        "denied-listed": lambda: not_applicable("denied-listed", NEEDS_REFUSED_CLIENT),
        "denied-by-default": lambda: not_applicable("denied-by-default", NEEDS_REFUSED_CLIENT),
        "forged-xff": lambda: client.forged_xff_from_allowed(url, session, denied_example(rules)),
        "push-refused-proxy": lambda: client.writes_refused(url, session),
        "push-refused-mirror": push_refused_mirror,
        "catalog-refused": lambda: client.catalog_refused(url, session, opened=settings.proxy.expose_catalog),
        "mirror-not-exposed": not_exposed,
        "network-policy": network_policy,
        "no-s3-redirect": no_redirect,
        "image-pinned": pinned,
        "upstream-credentials": upstream_credentials,
        "upstream-pull-only": lambda: upstream_scope_check(settings),
        "ratelimit-headers": lambda: rate_limit_check(settings),
        "cache-not-exposed": lambda: not_applicable(
            "cache-not-exposed", "the cache is a brokered S3 service: only its service key reaches the bucket, and "
            "the key never leaves the mirror's environment"),
        "config-matches": config_matches,
    }


def same_pinned_image(running: str, wanted: str) -> bool:
    """Is the droplet's image the pinned one? CC reports the stager's normalised name (registry@d comes
    back as library/registry@d), so the repository and the digest are compared, never the strings."""
    have, want = ImageRef.parse(running), ImageRef.parse(wanted)
    return have.digest is not None and (have.repository, have.digest) == (want.repository, want.digest)


def nginx_conf_drift(bits: bytes | None, rendered: str) -> list[str]:
    """How the deployed nginx.conf differs from the rendering, in line numbers only: it holds the allow-list."""
    if bits is None:
        return ["the proxy has no current package to compare"]
    with zipfile.ZipFile(io.BytesIO(bits)) as package:
        if "nginx.conf" not in package.namelist():
            return ["the proxy's package has no nginx.conf"]
        deployed = package.read("nginx.conf").decode(errors="replace")
    drift = config_drift("the proxy's nginx.conf", rendered, deployed)
    return [] if drift.identical else [drift.describe()]
