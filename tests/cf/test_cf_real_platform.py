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
    params = foundation.params("staging", deploy_timeout_seconds=8)
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


# ------------------------------------------------------------------------------ a failed deploy leaves things as they were

PANIC = "panic: s3aws: InvalidAccessKeyId: The AWS Access Key Id you provided does not exist"


def crashes_at_log_level(level: str):  # type: ignore[no-untyped-def]
    """Instances of the mirror that start with this log level panic at boot."""
    return lambda env, image: PANIC if image and env.get("REGISTRY_LOG_LEVEL") == level else None


def test_a_cancelled_deploy_puts_back_the_environment_so_a_restart_serves_the_old_configuration(
        foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    served = cf.app(MIRROR)["env"]
    cf.faults.crash_when = crashes_at_log_level("debug")
    params["registry"]["log_level"] = "debug"
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert "cancelled" in str(failed.value) and "previous environment restored" in str(failed.value)
    assert cf.app(MIRROR)["env"] == served  # CC's cancel alone would have left the debug configuration

    # A restart (a cell evacuated, an operator's `cf restart`) brings up what the app holds now.
    restarted = cc_session(cf).post(f"{cf.url}/v3/apps/{cf.app(MIRROR)['guid']}/actions/restart", timeout=10)
    assert restarted.status_code == 200
    platform = foundation.platform(params)
    assert "serves" in platform.space.verify_serving(platform.space.existing_app("registry", doing="test"))

    params["registry"]["log_level"] = "info"  # the previous params: the app runs them, honestly unchanged
    cf.clear_requests()
    assert "UNCHANGED" in deploy_runbook(foundation.platform(params), component="registry").text
    assert mutating(cf) == []


def test_a_stopped_failure_never_lets_the_fingerprint_vouch_for_the_failed_inputs(foundation: Foundation,
                                                                                  cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params), component="registry")
    cf.faults.build_fails = True
    params["registry"]["log_level"] = "warn"
    with pytest.raises(DeployError, match="on_failure: stop"):
        deploy_runbook(foundation.platform(params), component="registry")
    assert cf.app(MIRROR)["env"]["REGISTRY_LOG_LEVEL"] == "warn"  # staging leaves it for debugging
    cf.faults.build_fails = False
    params["registry"]["log_level"] = "info"
    cf.clear_requests()
    again = deploy_runbook(foundation.platform(params), component="registry")
    assert "UNCHANGED" not in again.text and "POST /v3/deployments" in mutating(cf)
    assert cf.app(MIRROR)["env"]["REGISTRY_LOG_LEVEL"] == "info"


# ------------------------------------------------------------------------------ crashes: whose, and how many

def test_old_instances_crashing_while_they_are_replaced_do_not_roll_back_a_good_rollout(
        foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    old_process = cf.app(MIRROR)["web_process_guids"][0]
    cf.faults.crash_when = crashes_at_log_level("info")  # what runs now starts crash-looping: redeploy it
    params["registry"]["log_level"] = "warn"
    deploy_runbook(foundation.platform(params), component="registry")
    assert cf.deployments(MIRROR)[-1]["status_reason"] == "DEPLOYED"
    assert not any(r.path.endswith("/actions/cancel") for r in cf.requests)
    crashes = cc_session(cf).get(f"{cf.url}/v3/audit_events?types=audit.app.process.crash", timeout=10).json()
    assert {e["actor"]["guid"] for e in crashes["resources"]} == {old_process}  # the stand-in did emit them


def test_one_transient_crash_of_a_new_instance_does_not_cancel_a_production_deploy(foundation: Foundation,
                                                                                  cf: FakeCloudFoundry) -> None:
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    cf.faults.transient_crashes = 1  # the registry panics once at boot (Docker Hub blipped); Diego restarts it
    params["registry"]["log_level"] = "warn"
    deploy_runbook(foundation.platform(params), component="registry")
    assert cf.deployments(MIRROR)[-1]["status_reason"] == "DEPLOYED"
    assert cf.faults.transient_crashes == 0 and cf.app(MIRROR)["env"]["REGISTRY_LOG_LEVEL"] == "warn"


def test_crashes_past_the_budget_fail_the_deploy(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("production", crash_budget=0)
    deploy_runbook(foundation.platform(params), component="registry")
    before = cf.app(MIRROR)["droplet_guid"]
    cf.faults.transient_crashes = 1
    params["registry"]["log_level"] = "warn"
    with pytest.raises(DeployError, match="more than the 0 tolerated"):
        deploy_runbook(foundation.platform(params), component="registry")
    assert cf.app(MIRROR)["droplet_guid"] == before and cf.app(MIRROR)["env"]["REGISTRY_LOG_LEVEL"] == "info"


# ------------------------------------------------------------------------------ someone else's deployment

def another_operator(foundation: Foundation, cf: FakeCloudFoundry, act) -> None:  # type: ignore[no-untyped-def]
    """Once the runbook's deployment is running, `act(session, our deployment)` once, as someone else."""
    def meanwhile() -> None:
        ours = [d for d in cf.deployments(MIRROR) if d["status_value"] == "ACTIVE"]
        if ours:
            foundation.clock.meanwhile.remove(meanwhile)
            act(cc_session(cf), ours[-1])
    foundation.clock.meanwhile.append(meanwhile)


def started_production(foundation: Foundation, cf: FakeCloudFoundry) -> tuple[dict, str]:
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    first = cf.app(MIRROR)["droplet_guid"]
    cf.faults.deployment_never_healthy = True
    params["registry"]["log_level"] = "warn"
    cf.clear_requests()
    return params, first


def test_a_deployment_another_operator_supersedes_is_theirs_never_rolled_back(foundation: Foundation,
                                                                             cf: FakeCloudFoundry) -> None:
    params, first = started_production(foundation, cf)
    theirs: list[str] = []
    another_operator(foundation, cf, lambda s, ours: theirs.append(s.post(f"{cf.url}/v3/deployments", timeout=10, json={
        "droplet": {"guid": first}, "relationships": {"app": {"data": {"guid": ours["app_guid"]}}}}).json()["guid"]))
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert f"SUPERSEDED by deployment {theirs[0]}" in str(failed.value)
    posts = [r for r in cf.requests if r.method == "POST" and r.path == "/v3/deployments"]
    assert len(posts) == 2  # ours, then theirs: nothing redeployed over it
    assert not any(r.path.endswith("/actions/cancel") for r in cf.requests)
    assert cf.deployments(MIRROR)[-1]["guid"] == theirs[0]


def test_a_deployment_another_operator_cancels_ends_the_run_naming_it(foundation: Foundation,
                                                                     cf: FakeCloudFoundry) -> None:
    params, first = started_production(foundation, cf)
    another_operator(foundation, cf, lambda s, ours: s.post(f"{cf.url}/v3/deployments/{ours['guid']}/actions/cancel",
                                                            timeout=10))
    with pytest.raises(DeployError, match="was CANCELED by someone else") as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert cf.deployments(MIRROR)[-1]["guid"] in str(failed.value)
    assert len([r for r in cf.requests if r.method == "POST" and r.path == "/v3/deployments"]) == 1
    assert len([r for r in cf.requests if r.path.endswith("/actions/cancel")]) == 1  # theirs
    assert cf.app(MIRROR)["droplet_guid"] == first


# ------------------------------------------------------------------------------ creates are not blindly retried

def test_creates_whose_answer_is_lost_are_looked_up_not_sent_twice(foundation: Foundation,
                                                                   cf: FakeCloudFoundry) -> None:
    cf.faults.lost_answers = ["POST /v3/service_instances", "POST /v3/service_credential_bindings",
                              "POST /v3/packages", r"POST /v3/packages/[^/]+/upload", "POST /v3/builds",
                              "POST /v3/deployments"]
    deploy_runbook(foundation.platform(foundation.params("production")))
    assert cf.faults.lost_answers == []  # every one was lost once
    created = [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.method == "POST"]
    for call in ("POST /v3/service_instances", "POST /v3/service_credential_bindings"):
        assert created.count(call) == 1, call
    assert created.count("POST /v3/packages") == 2  # one per app
    assert created.count("POST /v3/builds") == 2 and created.count("POST /v3/deployments") == 2
    assert created.count("POST /v3/packages/:guid/upload") == 1
    assert [d["status_reason"] for d in cf.deployments(MIRROR)] == ["DEPLOYED"]


# ------------------------------------------------------------------------------ instances go with the deployment

def test_the_rolling_path_scales_through_the_deployment_never_the_old_process(foundation: Foundation,
                                                                              cf: FakeCloudFoundry) -> None:
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    old_process = cf.app(MIRROR)["web_process_guids"][0]
    seen: list[int] = []

    def old_instances_meanwhile() -> None:
        if any(d["status_value"] == "ACTIVE" for d in cf.deployments(MIRROR)):
            old = cc_session(cf).get(f"{cf.url}/v3/processes/{old_process}", timeout=10)
            if old.status_code == 200:  # gone once the deployment finalized
                seen.append(old.json()["instances"])
    foundation.clock.meanwhile.append(old_instances_meanwhile)
    was = params["registry"]["instances"]
    params["registry"]["instances"] = was + 2
    cf.clear_requests()
    deploy_runbook(foundation.platform(params), component="registry")
    [manifest] = [r.body for r in cf.requests if r.path.endswith("/actions/apply_manifest")]
    assert "instances" not in str(manifest)
    [deployment] = [r.body for r in cf.requests if r.method == "POST" and r.path == "/v3/deployments"]
    assert deployment["options"] == {"max_in_flight": 1, "web_instances": was + 2}
    # The old process kept its instances until the new ones served, then went one at a time (max_in_flight
    # 1), never scaled at apply_manifest time.
    assert seen[0] == was and seen == sorted(seen, reverse=True)
    assert cf.app(MIRROR)["instances"] == was + 2
