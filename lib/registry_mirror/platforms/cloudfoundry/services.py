"""The mirror's cache: a brokered S3 service instance and a service key, created when missing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .space import Space
from ...credentials import Secret
from ...deploy_report import StepRecorder
from ...errors import DeployError
from ...registry_config import S3Location

S3_OFFERING = "s3"


@dataclass(frozen=True)
class S3Key:
    location: S3Location
    access_key: Secret
    secret_key: Secret


def ensure_s3(space: Space, steps: StepRecorder) -> S3Key | None:
    """The service instance and its key, created when missing; the key's bucket and credentials.
    None in a dry run that would create either (there is nothing to read yet)."""
    cc, cf = space.cc, space.cf
    instance = cc.service_instance(space.guid, cf.s3_service_instance)
    if instance is not None:
        steps.unchanged("s3", f"service {cf.s3_service_instance}", "exists")
    else:
        def create() -> str:
            plan = cc.service_plan(S3_OFFERING, cf.s3_service_plan)
            if plan is None:
                raise DeployError(f"service plan {S3_OFFERING}/{cf.s3_service_plan} is not offered here")
            cc.create_service_instance(space.guid, cf.s3_service_instance, plan)
            return f"{S3_OFFERING} {cf.s3_service_plan} created"
        steps.run("s3", f"create service {cf.s3_service_instance}", create)
        if steps.dry_run:
            return None
        instance = cc.service_instance(space.guid, cf.s3_service_instance)
        assert instance is not None
    key = cc.service_key(instance, cf.s3_service_key)
    if key is not None:
        steps.unchanged("s3", f"service key {cf.s3_service_key}", "exists")
    else:
        steps.run("s3", f"create service key {cf.s3_service_key}",
                  lambda: cc.create_service_key(instance, cf.s3_service_key) or "created")
        if steps.dry_run:
            return None
        key = cc.service_key(instance, cf.s3_service_key)
        assert key is not None
    creds = cc.service_key_credentials(key)
    return S3Key(S3Location(bucket=creds["bucket"], region=creds["region"], endpoint=key_endpoint(creds, cf.s3_endpoint)),
                 Secret("S3 access key", creds["access_key_id"]), Secret("S3 secret key", creds["secret_access_key"]))


def key_endpoint(credentials: dict[str, Any], which: Literal["regional", "fips"]) -> str:
    """The S3 endpoint the params choose, from the service key (cloud.gov's broker gives `endpoint` and
    `fips_endpoint`, host names without a scheme), as an https URL. Never the SDK's default endpoint:
    where FIPS is required that one is not allowed."""
    field = "fips_endpoint" if which == "fips" else "endpoint"
    host = str(credentials.get(field) or "").strip()
    if not host:
        raise DeployError(f"the S3 service key has no {field}, which cloudfoundry.s3_endpoint: {which} needs")
    return host if host.startswith(("https://", "http://")) else f"https://{host}"
