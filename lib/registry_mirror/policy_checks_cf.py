"""The policy checks on Cloud Foundry: what the API shows about routes, policies, images and config.

The behavioural checks (a client pulling, a denied client refused) need a machine on the
allow-list; on CF the pipeline's integration job runs them from its workers, so here they are n/a
with that reason.
"""
from __future__ import annotations

from .cf_platform import CloudFoundryPlatform, MIRROR_PORT
from .image_refs import ImageRef
from .policy_checks import CheckFn, PolicyCheck, rate_limit_check, not_applicable
from .policy_checks_local import NEXT, PROPS_NO_REDIRECT, PROVES
from .registry_config import SECRET_ENV, S3Location
from .rendering import render_cf_manifests

FROM_WORKERS = "Cloud Foundry: needs a client on the allow-list; the pipeline's integration job checks this"


def cf_checks(target: CloudFoundryPlatform) -> list[tuple[str, str, CheckFn]]:
    cf = target.cf
    mirror = target.app_named("registry")
    proxy = target.app_named("proxy")

    def check(check_id: str, proves: str, how: str, expected: str, observed: str, ok: bool | None) -> PolicyCheck:
        status = "pass" if ok else ("warn" if ok is None else "fail")
        return PolicyCheck(check_id, proves, how, expected, observed, status, "" if ok else NEXT.get(check_id, ""))

    def need_mirror() -> dict:
        if mirror is None:
            raise LookupError(f"app {cf.mirror_app} does not exist in {cf.org}/{cf.space}")
        return mirror

    def env() -> dict[str, str]:
        return target.app_env(need_mirror())

    def push_refused_mirror() -> PolicyCheck:
        remote = env().get("REGISTRY_PROXY_REMOTEURL", "")
        return check("push-refused-mirror", PROVES["push-refused-mirror"], "REGISTRY_PROXY_REMOTEURL in the app env",
                     "set (proxy mode refuses pushes with 405 UNSUPPORTED)", remote or "not set", bool(remote))

    def not_exposed() -> PolicyCheck:
        urls = target.route_urls(need_mirror())
        public = [u for u in urls if not u.split("/")[0].endswith(".apps.internal")]
        return check("mirror-not-exposed", PROVES["mirror-not-exposed"], f"routes of {cf.mirror_app}",
                     "only routes on apps.internal", f"public route(s): {public}" if public else
                     f"{len(urls)} route(s), all on apps.internal", not public and bool(urls))

    def network_policy() -> PolicyCheck:
        app = need_mirror()
        policies = [p for p in target.policies_for(app) if p.get("destination", {}).get("id") == app["guid"]]
        good = [p for p in policies if proxy is not None and p["source"]["id"] == proxy["guid"]
                and p["destination"].get("protocol") == "tcp"
                and p["destination"].get("ports", {}).get("start") == MIRROR_PORT]
        others = [p for p in policies if p not in good]
        observed = (f"{len(good)} proxy -> mirror tcp {MIRROR_PORT}" + (f"; {len(others)} other policy(ies) "
                    f"to the mirror from {sorted({p['source']['id'] for p in others})}" if others else ""))
        return check("network-policy", PROVES["network-policy"], "network policies whose destination is the mirror",
                     f"exactly proxy -> mirror tcp {MIRROR_PORT}", observed, len(good) == 1 and not others)

    def no_redirect() -> PolicyCheck:
        value = env().get("REGISTRY_STORAGE_REDIRECT_DISABLE", "")
        return check("no-s3-redirect", PROPS_NO_REDIRECT, "REGISTRY_STORAGE_REDIRECT_DISABLE in the app env",
                     "true", value or "not set", value == "true")

    def pinned() -> PolicyCheck:
        running = target.droplet_image(need_mirror()) or ""
        want = target.settings.registry.image or ""
        pinned_ok = ImageRef.parse(running).digest is not None
        return check("image-pinned", PROVES["image-pinned"], "image of the mirror's current droplet",
                     f"{want} (pinned by digest, as tested)", running or "no droplet",
                     pinned_ok and running == want)

    def upstream_credentials() -> PolicyCheck:
        values = env()
        user = values.get("REGISTRY_PROXY_USERNAME")
        has_password = "REGISTRY_PROXY_PASSWORD" in values
        if not user:
            return check("upstream-credentials", PROVES["upstream-credentials"], "REGISTRY_PROXY_USERNAME/PASSWORD",
                         "a user and a password", "anonymous upstream pulls", None)
        return check("upstream-credentials", PROVES["upstream-credentials"],
                     "REGISTRY_PROXY_USERNAME and presence of REGISTRY_PROXY_PASSWORD", "both set",
                     f"user {user}, password {'set' if has_password else 'MISSING'}", has_password)

    def rate_limit() -> PolicyCheck:
        return rate_limit_check(target.settings, PROVES["ratelimit-headers"])

    def config_matches() -> PolicyCheck:
        values = env()
        bucket = values.get("REGISTRY_STORAGE_S3_BUCKET", "")
        region = values.get("REGISTRY_STORAGE_S3_REGION", "")
        rendered = render_cf_manifests(target.settings, target.rules, s3=S3Location(bucket, region)).mirror_env
        secret_names = set(SECRET_ENV.values())
        drift = [k for k, v in rendered.items() if values.get(k) != v]
        extra = [k for k in values if k.startswith("REGISTRY_") and k not in rendered and k not in secret_names]
        process = target.web_process(need_mirror())
        if process.get("instances") != target.settings.registry.instances:
            drift.append(f"instances {process.get('instances')} (params {target.settings.registry.instances})")
        observed = "; ".join([f"differs: {', '.join(drift)}"] if drift else []
                             + ([f"not rendered: {', '.join(extra)}"] if extra else [])) or "identical"
        return check("config-matches", PROVES["config-matches"],
                     "the mirror's REGISTRY_* env and instance count against a fresh rendering (secrets excluded)",
                     "identical", observed, not drift and not extra)

    return [
        not_applicable("allowed-api", PROVES["allowed-api"], FROM_WORKERS),
        not_applicable("allowed-pull", PROVES["allowed-pull"], FROM_WORKERS),
        not_applicable("denied-listed", PROVES["denied-listed"], FROM_WORKERS),
        not_applicable("denied-by-default", PROVES["denied-by-default"], FROM_WORKERS),
        not_applicable("forged-xff", PROVES["forged-xff"], FROM_WORKERS),
        not_applicable("push-refused-proxy", PROVES["push-refused-proxy"], FROM_WORKERS),
        ("push-refused-mirror", PROVES["push-refused-mirror"], push_refused_mirror),
        ("mirror-not-exposed", PROVES["mirror-not-exposed"], not_exposed),
        ("network-policy", PROVES["network-policy"], network_policy),
        ("no-s3-redirect", PROPS_NO_REDIRECT, no_redirect),
        ("image-pinned", PROVES["image-pinned"], pinned),
        ("upstream-credentials", PROVES["upstream-credentials"], upstream_credentials),
        ("ratelimit-headers", PROVES["ratelimit-headers"], rate_limit),
        ("config-matches", PROVES["config-matches"], config_matches),
    ]
