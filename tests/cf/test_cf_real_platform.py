"""What the real Cloud Foundry does that a kinder stand-in used to hide: each test drives the runbooks
in-process against the stand-in (now as strict as CC, Diego and the policy server on that point) on a
fake clock, and asserts the outcome, the calls recorded and the state the stand-in holds."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from registry_mirror.errors import DeployError, PreflightError
from registry_mirror.platforms.cloudfoundry.session import RetryAfterTooLong
from tests.cf.conftest import CF_PASSWORD, CF_USER, FakeClock, Foundation, Hub, cc_session, session_on
from tests.cf.runbooks import deploy_runbook
from tests.fakes.cf_api import DEFAULT_S3_CREDENTIALS, FakeCloudFoundry

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MIRROR = "docker-registry-mirror"


def mutating(cf: FakeCloudFoundry) -> list[str]:
    return [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.mutating and r.status < 400]


def fake(**kwargs: Any) -> FakeCloudFoundry:
    return FakeCloudFoundry(users={CF_USER: CF_PASSWORD}, **kwargs)


# ------------------------------------------------------------------------------ S3 endpoint from the key

@pytest.mark.parametrize("choice,endpoint", [("fips", "https://s3-fips.us-gov-west-1.amazonaws.com"),
                                             ("regional", "https://s3.us-gov-west-1.amazonaws.com")])
def test_the_mirror_uses_the_s3_endpoint_of_the_service_key_the_params_choose(
        foundation: Foundation, cf: FakeCloudFoundry, choice: str, endpoint: str) -> None:
    deploy_runbook(foundation.platform(foundation.params("production", s3_endpoint=choice)), component="registry")
    env = cf.app(MIRROR)["env"]
    assert env["REGISTRY_STORAGE_S3_REGIONENDPOINT"] == endpoint
    assert env["REGISTRY_STORAGE_S3_REGION"] == "us-gov-west-1"


def test_a_key_without_the_fips_endpoint_stops_before_the_app_changes(docker_hub: Hub, tmp_path: Path,
                                                                       credentials: None) -> None:
    key = {k: v for k, v in DEFAULT_S3_CREDENTIALS.items() if k != "fips_endpoint"}
    with fake(s3_credentials=key) as cf:
        here = Foundation(tmp_path, docker_hub, cf)
        with pytest.raises(DeployError, match="no fips_endpoint"):
            deploy_runbook(here.platform(here.params("production", s3_endpoint="fips")), component="registry")
        assert not any("/apply_manifest" in call for call in mutating(cf))


# ------------------------------------------------------------------------------ Retry-After has a ceiling

def test_a_retry_after_past_the_ceiling_fails_in_one_sentence_without_waiting(cf: FakeCloudFoundry) -> None:
    clock = FakeClock()
    session = session_on(cf, clock)
    said: list[str] = []
    session.notify = said.append
    session.login()
    cf.faults.rate_limited_429, cf.faults.retry_after_seconds = 1, 3600  # CC's window: up to an hour
    with pytest.raises(RetryAfterTooLong) as failed:
        session.get("/v3/apps")
    message = str(failed.value)
    assert "3600 s" in message and "limit of 300 s" in message and message.count(". ") == 0
    assert clock.sleeps == [] and said == []


def test_every_retry_wait_is_said_before_it_starts(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    platform = foundation.platform(foundation.params("staging", max_retry_after_seconds=30))
    said: list[tuple[str, int]] = []
    platform.session.notify = lambda line: said.append((line, len(foundation.clock.sleeps)))
    cf.faults.rate_limited_429, cf.faults.retry_after_seconds = 1, 20
    assert platform.status() is not None
    [(line, sleeps_before)] = said
    assert "waiting 20 s" in line and "429" in line
    assert sleeps_before == 0 and foundation.clock.sleeps[0] == 20.0  # said, then waited
    cf.faults.rate_limited_429, cf.faults.retry_after_seconds = 1, 31
    with pytest.raises(DeployError, match="asking to wait 31 s .* limit of 30 s"):
        platform.status()


# ------------------------------------------------------------------------------ the policy server decides

def test_network_preflight_passes_where_the_policy_server_lets_space_developers_manage_policies(
        docker_hub: Hub, tmp_path: Path, credentials: None) -> None:
    """With enable_space_developer_self_service the token needs no network.write: the policy server
    answers, and the deploy creates the policy."""
    with fake(without_scopes={"network.write"}, space_developer_self_service=True) as cf:
        here = Foundation(tmp_path, docker_hub, cf)
        preflight = here.platform(here.params("production")).preflight()
        assert preflight.ok, preflight
        deploy_runbook(here.platform(here.params("production")))
        assert len(cf.policies()) == 1


def test_network_preflight_fails_where_the_policy_server_refuses(docker_hub: Hub, tmp_path: Path,
                                                                credentials: None) -> None:
    with fake(without_scopes={"network.write"}) as cf:
        here = Foundation(tmp_path, docker_hub, cf)
        preflight = here.platform(here.params("production")).preflight()
        [failed] = [c for c in preflight.checks if not c.ok]
        assert "policy server refuses" in failed.detail and "lacks network.write" in failed.detail
        assert [r for r in cf.requests if r.mutating] == []


# ------------------------------------------------------------------------------ nothing while a deployment runs

def left_in_flight(foundation: Foundation, cf: FakeCloudFoundry) -> tuple[dict, str]:
    """Staging's deploy left a deployment ACTIVE (on_failure: stop); its guid."""
    params = foundation.params("staging", deploy_timeout_seconds=2)
    deploy_runbook(foundation.platform(params), component="registry")
    cf.faults.deployment_never_healthy = True
    params["registry"]["log_level"] = "warn"
    with pytest.raises(DeployError, match="left ACTIVE"):
        deploy_runbook(foundation.platform(params), component="registry")
    [active] = [d for d in cf.deployments(MIRROR) if d["status_value"] == "ACTIVE"]
    cf.clear_requests()
    return params, active["guid"]


def test_deploy_preflight_names_the_deployment_in_flight_and_changes_nothing(foundation: Foundation,
                                                                             cf: FakeCloudFoundry) -> None:
    params, guid = left_in_flight(foundation, cf)
    with pytest.raises(PreflightError) as failed:
        deploy_runbook(foundation.platform(params))
    assert f"deployment {guid} of {MIRROR} is in flight" in str(failed.value)
    assert [r for r in cf.requests if r.mutating] == []


@pytest.mark.parametrize("remedy", ["scale-mirrors", "redeploy", "replace-mirrors"])
def test_a_remedy_that_would_change_the_app_names_the_deployment_in_flight_and_changes_nothing(
        foundation: Foundation, cf: FakeCloudFoundry, remedy: str) -> None:
    params, guid = left_in_flight(foundation, cf)
    with pytest.raises(DeployError) as failed:
        foundation.platform(params).remedy(remedy, scale_to=4)
    sentence = str(failed.value)
    assert f"deployment {guid} of {MIRROR} is in flight" in sentence and sentence.count(": ") <= 2
    assert [r for r in cf.requests if r.mutating] == []
