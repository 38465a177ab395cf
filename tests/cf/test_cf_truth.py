"""On Cloud Foundry "deployed" means "serving", rollback keeps today's credentials, preflight reads what
the foundation allows, and the session honours Retry-After. The runbooks run in-process on the CF
stand-in and a fake clock; each test asserts the outcome, the calls the stand-in recorded and the
state it holds."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from registry_mirror.errors import DeployError, PreflightError
from tests.cf.conftest import CF_PASSWORD, CF_USER, FakeClock, Foundation, Hub, assert_no_secret, cc_session, session_on
from tests.cf.runbooks import deploy_runbook, rollback_runbook
from tests.fakes.cf_api import DEFAULT_S3_CREDENTIALS, FakeCloudFoundry

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MIRROR = "docker-registry-mirror"
FINGERPRINT = "registry-mirror.cloud.gov/fingerprint"
PANIC = "panic: s3aws: InvalidAccessKeyId: The AWS Access Key Id you provided does not exist"


def mutating(cf: FakeCloudFoundry) -> list[str]:
    return [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.mutating and r.status < 400]


def mirror_crashes(env: Any, image: str | None) -> str | None:
    """The registry image panics at start; the proxy (a buildpack app, no image) runs."""
    return PANIC if image else None


def stale_key_crashes(cf: FakeCloudFoundry):  # type: ignore[no-untyped-def]
    """An instance whose S3 key the broker no longer knows panics at start, as the registry does."""
    def decide(env: Any, image: str | None) -> str | None:
        if image and env.get("REGISTRY_STORAGE_S3_ACCESSKEY") != cf.s3_credentials["access_key_id"]:
            return PANIC
        return None
    return decide


def annotation(cf: FakeCloudFoundry, app: str) -> str | None:
    return cf.app(app)["annotations"].get(FINGERPRINT)  # type: ignore[index]


# ------------------------------------------------------------------------------ deployed means serving

def test_first_deploy_whose_instances_crash_fails_with_the_reason_and_production_stops_it(
        foundation: Foundation, cf: FakeCloudFoundry) -> None:
    cf.faults.crash_when = mirror_crashes
    params = foundation.params("production")
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert "InvalidAccessKeyId" in str(failed.value) and "first deploy" in str(failed.value)
    # CC finalized the deployment at once (the app was stopped): DEPLOYED, yet nothing serves.
    assert [(d["status_value"], d["status_reason"]) for d in cf.deployments(MIRROR)] == [("FINALIZED", "DEPLOYED")]
    assert "POST /v3/apps/:guid/actions/stop" in mutating(cf)
    assert cf.app(MIRROR)["state"] == "STOPPED" and annotation(cf, MIRROR) is None

    cf.faults.crash_when = None
    cf.clear_requests()
    again = deploy_runbook(foundation.platform(params), component="registry")
    assert "UNCHANGED" not in again.text and "POST /v3/deployments" in mutating(cf)
    assert cf.app(MIRROR)["state"] == "STARTED" and annotation(cf, MIRROR)


def test_a_crash_looping_app_is_never_unchanged(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params), component="registry")
    cf.faults.crash_when = mirror_crashes
    stop_then_start(cf)  # the same inputs, but now every instance crashes after a moment of RUNNING
    cf.clear_requests()
    platform = foundation.platform(params)
    with pytest.raises(DeployError) as failed:
        deploy_runbook(platform, component="registry")
    assert "InvalidAccessKeyId" in str(failed.value)
    assert "on_failure: stop" in str(failed.value)  # staging leaves it for debugging
    assert "POST /v3/deployments" in mutating(cf)
    assert platform.status().condition.startswith("DEGRADED")


def test_deploy_then_stop_then_redeploy_checks_health_instead_of_assuming_it(foundation: Foundation,
                                                                            cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params), component="registry")
    cc_session(cf).post(f"{cf.url}/v3/apps/{cf.app(MIRROR)['guid']}/actions/stop", timeout=10)
    cf.clear_requests()
    run = deploy_runbook(foundation.platform(params), component="registry")
    assert "UNCHANGED" not in run.text
    paths = [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests]
    deployed = len(paths) - paths[::-1].index("POST /v3/deployments")
    assert "GET /v3/processes/:guid/stats" in paths[deployed:], "no instance health read after the deployment"
    assert cf.app(MIRROR)["state"] == "STARTED"

    # The same, with instances that crash once started: the deployment is DEPLOYED, the deploy is not.
    cc_session(cf).post(f"{cf.url}/v3/apps/{cf.app(MIRROR)['guid']}/actions/stop", timeout=10)
    cf.faults.crash_when = mirror_crashes
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert "crashed" in str(failed.value) and "InvalidAccessKeyId" in str(failed.value)
    assert cf.deployments(MIRROR)[-1]["status_reason"] == "DEPLOYED"


def test_the_fingerprint_lives_in_metadata_and_the_http_secret_stays(foundation: Foundation,
                                                                      cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params), component="registry")
    env = cf.app(MIRROR)["env"]
    assert "MIRROR_RUNBOOK_DIGEST" not in env and annotation(cf, MIRROR)
    secret = env["REGISTRY_HTTP_SECRET"]
    params["registry"]["instances"] = 3
    deploy_runbook(foundation.platform(params), component="registry")
    assert cf.app(MIRROR)["env"]["REGISTRY_HTTP_SECRET"] == secret
    # Recording the fingerprint made no revision: the env the last deployment ran with is the env now.
    assert cf.revisions(MIRROR)[-1]["env"] == cf.app(MIRROR)["env"]


# ------------------------------------------------------------------------------ rollback and credentials

def test_rollback_after_a_key_rotation_keeps_the_current_key_and_serves(foundation: Foundation,
                                                                        cf: FakeCloudFoundry) -> None:
    cf.faults.crash_when = stale_key_crashes(cf)
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    first = cf.app(MIRROR)["droplet_guid"]
    # The broker rotates the key: the old one stops working at once.
    cf.s3_credentials = {**DEFAULT_S3_CREDENTIALS, "access_key_id": "AKIAROTATEDSTANDIN",
                         "secret_access_key": "rotated-s3-secret-DO-NOT-LEAK"}
    params["registry"]["log_level"] = "warn"  # and a config change ships with the new key
    deploy_runbook(foundation.platform(params), component="registry")
    assert cf.app(MIRROR)["env"]["REGISTRY_STORAGE_S3_ACCESSKEY"] == "AKIAROTATEDSTANDIN"

    run, calls = rollback_runbook(foundation.platform(params), component="registry", confirm=True)
    assert run.ok, run
    mirror = cf.app(MIRROR)
    assert mirror["droplet_guid"] == first
    assert mirror["env"]["REGISTRY_STORAGE_S3_ACCESSKEY"] == "AKIAROTATEDSTANDIN"  # not the revision's key
    assert mirror["env"]["REGISTRY_LOG_LEVEL"] == "info"  # the revision's configuration is back
    assert mirror["state"] == "STARTED" and "serves" in repr(run)
    assert annotation(cf, MIRROR) is None  # the next deploy applies the params again
    shown = repr(run) + calls.to_string()
    assert_no_secret(shown)
    assert "rotated-s3-secret-DO-NOT-LEAK" not in shown


# ------------------------------------------------------------------------------ preflight capabilities

def fake(**kwargs: Any) -> FakeCloudFoundry:
    return FakeCloudFoundry(users={CF_USER: CF_PASSWORD}, **kwargs)


@pytest.mark.parametrize("name,foundation,cf_params,says", [
    ("old CC", {"cc_version": "3.150.0"}, {"max_in_flight": 2}, "predates options.max_in_flight"),
    ("no network.write", {"without_scopes": {"network.write"}}, {}, "lacks network.write"),
    ("diego_docker off", {"feature_flags": {"diego_docker": False}}, {}, "diego_docker feature flag is off"),
    ("no such plan", {}, {"s3_service_plan": "gold"}, "s3/gold is not offered"),
    ("not a developer", {"non_developers": {CF_USER}}, {}, "is not a space developer"),
    ("no quota left", {"org_quota": {"total_memory_in_mb": 512}}, {}, "has no room for"),
])
def test_preflight_refuses_what_the_foundation_cannot_do_before_any_change(
        docker_hub: Hub, tmp_path: Path, credentials: None, name: str, foundation: dict,
        cf_params: dict, says: str) -> None:
    with fake(**foundation) as cf:
        here = Foundation(tmp_path, docker_hub, cf)
        with pytest.raises(PreflightError) as failed:
            deploy_runbook(here.platform(here.params("production", **cf_params)))
        assert says in str(failed.value), name
        assert "preflight failed, nothing was changed" in str(failed.value)
        assert [r for r in cf.requests if r.mutating] == []


def test_an_old_cc_deploys_without_options_when_one_at_a_time_is_asked(docker_hub: Hub, tmp_path: Path,
                                                                      credentials: None) -> None:
    with fake(cc_version="3.150.0") as cf:
        here = Foundation(tmp_path, docker_hub, cf)
        deploy_runbook(here.platform(here.params("production", max_in_flight=1)), component="registry")
        [deployment] = [r for r in cf.requests if r.method == "POST" and r.path == "/v3/deployments"]
        assert "options" not in deployment.body


# ------------------------------------------------------------------------------ the mirror image's own pull

def test_the_registry_image_is_pulled_with_the_accounts_credentials(foundation: Foundation, cf: FakeCloudFoundry,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    params = foundation.params("staging")
    params["registry"] |= {"image_pull_username": "cloudgovpull", "image_pull_password_env": "TEST_IMAGE_PULL_TOKEN"}
    with pytest.raises(PreflightError, match="TEST_IMAGE_PULL_TOKEN"):
        deploy_runbook(foundation.platform(params), component="registry")
    assert [r for r in cf.requests if r.mutating] == []
    monkeypatch.setenv("TEST_IMAGE_PULL_TOKEN", "image-pull-token-DO-NOT-LEAK")
    run = deploy_runbook(foundation.platform(params), component="registry")
    [package] = [r.body for r in cf.requests if r.method == "POST" and r.path == "/v3/packages"]
    assert package["data"]["username"] == "cloudgovpull"
    assert package["data"]["password"] == "image-pull-token-DO-NOT-LEAK"  # to CC, and nowhere else
    assert "image-pull-token-DO-NOT-LEAK" not in run.text


def test_a_failed_package_stops_the_deploy_with_cfs_error(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    cf.faults.package_processing_fails = True
    with pytest.raises(DeployError, match="FAILED: Package upload failed"):
        deploy_runbook(foundation.platform(foundation.params("staging")), component="proxy")
    assert "POST /v3/builds" not in mutating(cf)


# ------------------------------------------------------------------------------ calls

def test_retry_after_on_429_is_honoured_on_a_fake_clock(cf: FakeCloudFoundry) -> None:
    clock = FakeClock()
    session = session_on(cf, clock)
    session.login()
    cf.faults.rate_limited_429, cf.faults.retry_after_seconds = 1, 3
    assert session.get("/v3/apps")["resources"] == []
    assert clock.sleeps == [3.0]


def test_token_requests_retry_and_a_refused_refresh_logs_in_again(cf: FakeCloudFoundry) -> None:
    clock = FakeClock()
    session = session_on(cf, clock)
    cf.faults.uaa_unavailable, cf.faults.retry_after_seconds = 2, 2
    session.login()
    assert clock.sleeps == [2.0, 2.0]
    cf.revoke_tokens()  # the access token and its refresh token both stop working
    assert session.get("/v3/apps")["resources"] == []
    grants = [r.body["grant_type"] for r in cf.requests if r.path.endswith("/oauth/token") and r.status == 200]
    assert grants[-1] == "password"  # the refresh was refused (401 invalid_token): a clean login, no raw error


# ------------------------------------------------------------------------------ helpers

def stop_then_start(cf: FakeCloudFoundry) -> None:
    session, guid = cc_session(cf), cf.app(MIRROR)["guid"]  # type: ignore[index]
    assert session.post(f"{cf.url}/v3/apps/{guid}/actions/stop", timeout=10).status_code == 200
    assert session.post(f"{cf.url}/v3/apps/{guid}/actions/start", timeout=10).status_code == 200
