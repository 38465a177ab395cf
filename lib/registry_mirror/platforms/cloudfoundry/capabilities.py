"""What this foundation lets this user do, read before any change (the CF part of preflight).

Each check reads one thing from the API and says what it saw: the CC version (for
`options.max_in_flight`), the user's role in the space, the token's network scope and the policy
server's own answer, the `diego_docker` feature flag, the S3 service plan, the `apps.internal`
domain, and whether the org's quota has room for the instances a deploy starts.
"""
from __future__ import annotations

from dataclasses import dataclass

from .resources import CloudController, Resource
from .services import S3_OFFERING
from .session import CfApiError, CfSession
from ...parameters import CloudFoundrySettings, Settings, size_mb
from ...preflight import Check

# CC takes `options.max_in_flight` on deployments from API 3.173.0 on (cloud_controller_ng PR #3907,
# mid-2024); an older CC answers 422 "Unknown field(s): 'options'", and replaces one instance at a time.
MAX_IN_FLIGHT_SINCE = (3, 173, 0)
NETWORK_SCOPES = {"network.write", "network.admin"}
ADMIN_SCOPE = "cloud_controller.admin"


@dataclass(frozen=True)
class Capabilities:
    """What the deploy may use: read once in preflight, used when it builds requests."""

    cc_version: tuple[int, ...]

    @property
    def max_in_flight(self) -> bool:
        return self.cc_version >= MAX_IN_FLIGHT_SINCE


def capabilities(session: CfSession) -> Capabilities:
    return Capabilities(session.cc_version)


def capability_checks(cc: CloudController, settings: Settings, space: Resource, *,
                      first_deploy: bool, service_exists: bool) -> list[Check]:
    """Read-only checks; each failure is one sentence naming what is missing and where."""
    cf = settings.cloudfoundry
    assert cf is not None
    checks = [_max_in_flight(cc.session, cf), _space_developer(cc, cf, space), *_network(cc), _docker_flag(cc, cf)]
    if not service_exists:
        checks.append(_service_plan(cc, cf))
    checks += [_internal_domain(cc), _quota(cc, settings, first_deploy=first_deploy)]
    return checks


def _max_in_flight(session: CfSession, cf: CloudFoundrySettings) -> Check:
    version = ".".join(map(str, session.cc_version))
    if Capabilities(session.cc_version).max_in_flight:
        return Check("CC version", True, f"{version}: deployments take max_in_flight {cf.max_in_flight}")
    if cf.max_in_flight == 1:
        return Check("CC version", True, f"{version} predates options.max_in_flight: deployments replace one "
                                         "instance at a time, as the params ask")
    return Check("CC version", False, f"CC {version} predates options.max_in_flight (3.173.0) and replaces one "
                                      f"instance at a time: set cloudfoundry.max_in_flight to 1 (it is "
                                      f"{cf.max_in_flight}) or deploy to a newer foundation")


def _space_developer(cc: CloudController, cf: CloudFoundrySettings, space: Resource) -> Check:
    session = cc.session
    if ADMIN_SCOPE in session.claims.get("scope", []):
        return Check("space developer", True, f"{session.credentials.name} is a CF admin")
    roles = cc.space_developer_roles(session.user_guid, space)
    return Check("space developer", bool(roles),
                 f"{session.credentials.name} is a space developer in {cf.org}/{cf.space}" if roles else
                 f"{session.credentials.name} is not a space developer in {cf.org}/{cf.space}, which a deploy needs")


def _network(cc: CloudController) -> list[Check]:
    """Decided by the policy server's own answer to the read the policy step makes, not by the token's
    scopes: with `enable_space_developer_self_service` the policy server lets space developers manage
    their apps' policies without network.write, and without it, it refuses a token that lacks the scope."""
    session = cc.session
    try:
        cc.policies("preflight")
    except CfApiError as exc:
        scopes = set(session.claims.get("scope", []))
        why = "" if scopes & NETWORK_SCOPES else f" (the token of {session.credentials.name} lacks network.write)"
        return [Check("network policy API", False, f"the policy server refuses the proxy -> mirror network policy "
                                                   f"step{why}: {exc}")]
    return [Check("network policy API", True, "the policy server answers the policy step's read")]


def _docker_flag(cc: CloudController, cf: CloudFoundrySettings) -> Check:
    enabled = cc.feature_flag("diego_docker")
    return Check("diego_docker", enabled, "enabled: the mirror runs as a docker image" if enabled else
                 f"the diego_docker feature flag is off on {cf.api}, so the mirror's docker image cannot run")


def _service_plan(cc: CloudController, cf: CloudFoundrySettings) -> Check:
    plan = cc.service_plan(S3_OFFERING, cf.s3_service_plan)
    return Check("S3 service plan", plan is not None,
                 f"s3/{cf.s3_service_plan} is offered" if plan else
                 f"the service plan s3/{cf.s3_service_plan} is not offered to {cf.org}/{cf.space}")


def _internal_domain(cc: CloudController) -> Check:
    internal = cc.internal_domain() is not None
    return Check("apps.internal domain", internal, "internal, for the mirror's route" if internal else
                 "the foundation has no internal apps.internal domain, which keeps the mirror off the public "
                 "routers")


def _quota(cc: CloudController, settings: Settings, *, first_deploy: bool) -> Check:
    """Room in the org's quota for what a deploy starts: every instance of both apps on a first
    deploy, else max_in_flight extra instances of the larger app while a rolling deployment runs."""
    cf = settings.cloudfoundry
    assert cf is not None
    apps = [(settings.registry.instances, size_mb(settings.registry.memory)), (settings.proxy.instances,
                                                                           size_mb(settings.proxy.memory))]
    if first_deploy:
        need_instances, need_mb = sum(n for n, _ in apps), sum(n * mb for n, mb in apps)
    else:
        need_instances, need_mb = cf.max_in_flight, max(cf.max_in_flight * mb for _, mb in apps)
    org = cc.organization(cf.org)
    assert org is not None  # the space was found in it
    quota, usage = cc.organization_quota(org), cc.organization_usage(org)
    problems = []
    if quota.get("total_memory_in_mb") is not None and usage["memory_in_mb"] + need_mb > quota["total_memory_in_mb"]:
        problems.append(f"{need_mb} MB more memory (in use {usage['memory_in_mb']} of {quota['total_memory_in_mb']})")
    if quota.get("total_instances") is not None and usage["started_instances"] + need_instances > quota["total_instances"]:
        problems.append(f"{need_instances} more instance(s) (running {usage['started_instances']} of "
                        f"{quota['total_instances']})")
    if problems:
        return Check("org quota", False, f"the quota of {cf.org} has no room for " + " and ".join(problems))
    return Check("org quota", True, f"room for {need_instances} instance(s), {need_mb} MB")
