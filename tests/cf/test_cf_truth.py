"""On Cloud Foundry "deployed" means "serving", rollback keeps today's credentials, preflight reads what
the foundation allows, and the session honours Retry-After. Papermill scenarios on the CF stand-in,
each asserting the exit code, the calls the stand-in recorded and the state it holds."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from registry_mirror.platforms.cloudfoundry.session import CfCredentials, CfSession
from registry_mirror.credentials import Secret
from tests.cf.conftest import CF_PASSWORD, CF_USER, CfRunner, Hub, cc_session
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
        runner: CfRunner, cf: FakeCloudFoundry) -> None:
    cf.faults.crash_when = mirror_crashes
    params = runner.params("production")
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode != 0
    assert "InvalidAccessKeyId" in run.stderr and "first deploy" in run.stderr
    # CC finalized the deployment at once (the app was stopped): DEPLOYED, yet nothing serves.
    assert [(d["status_value"], d["status_reason"]) for d in cf.deployments(MIRROR)] == [("FINALIZED", "DEPLOYED")]
    assert "POST /v3/apps/:guid/actions/stop" in mutating(cf)
    assert cf.app(MIRROR)["state"] == "STOPPED" and annotation(cf, MIRROR) is None

    cf.faults.crash_when = None
    cf.clear_requests()
    again = runner.run("deploy.ipynb", params, component="registry")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "UNCHANGED" not in again.outputs() and "POST /v3/deployments" in mutating(cf)
    assert cf.app(MIRROR)["state"] == "STARTED" and annotation(cf, MIRROR)


def test_a_crash_looping_app_is_never_unchanged(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    cf.faults.crash_when = mirror_crashes
    stop_then_start(cf)  # the same inputs, but now every instance crashes after a moment of RUNNING
    cf.clear_requests()
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode != 0
    assert "UNCHANGED" not in run.outputs() and "InvalidAccessKeyId" in run.stderr
    assert "on_failure: stop" in run.stderr  # staging leaves it for debugging
    assert "POST /v3/deployments" in mutating(cf)


def test_deploy_then_stop_then_redeploy_checks_health_instead_of_assuming_it(runner: CfRunner,
                                                                            cf: FakeCloudFoundry) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    cc_session(cf).post(f"{cf.url}/v3/apps/{cf.app(MIRROR)['guid']}/actions/stop", timeout=10)
    cf.clear_requests()
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "UNCHANGED" not in run.outputs()
    paths = [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests]
    deployed = len(paths) - paths[::-1].index("POST /v3/deployments")
    assert "GET /v3/processes/:guid/stats" in paths[deployed:], "no instance health read after the deployment"
    assert cf.app(MIRROR)["state"] == "STARTED"

    # The same, with instances that crash once started: the deployment is DEPLOYED, the deploy is not.
    cc_session(cf).post(f"{cf.url}/v3/apps/{cf.app(MIRROR)['guid']}/actions/stop", timeout=10)
    cf.faults.crash_when = mirror_crashes
    failed = runner.run("deploy.ipynb", params, component="registry")
    assert failed.returncode != 0 and "crashed" in failed.stderr and "InvalidAccessKeyId" in failed.stderr
    assert cf.deployments(MIRROR)[-1]["status_reason"] == "DEPLOYED"


def test_the_fingerprint_lives_in_metadata_and_the_http_secret_stays(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    env = cf.app(MIRROR)["env"]
    assert "MIRROR_RUNBOOK_DIGEST" not in env and annotation(cf, MIRROR)
    secret = env["REGISTRY_HTTP_SECRET"]
    params["registry"]["instances"] = 3
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    assert cf.app(MIRROR)["env"]["REGISTRY_HTTP_SECRET"] == secret
    # Recording the fingerprint made no revision: the env the last deployment ran with is the env now.
    assert cf.revisions(MIRROR)[-1]["env"] == cf.app(MIRROR)["env"]


# ------------------------------------------------------------------------------ rollback and credentials

def test_rollback_after_a_key_rotation_keeps_the_current_key_and_serves(runner: CfRunner,
                                                                        cf: FakeCloudFoundry) -> None:
    cf.faults.crash_when = stale_key_crashes(cf)
    params = runner.params("production")
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    first = cf.app(MIRROR)["droplet_guid"]
    # The broker rotates the key: the old one stops working at once.
    cf.s3_credentials = {**DEFAULT_S3_CREDENTIALS, "access_key_id": "AKIAROTATEDSTANDIN",
                         "secret_access_key": "rotated-s3-secret-DO-NOT-LEAK"}
    params["registry"]["log_level"] = "warn"  # and a config change ships with the new key
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    assert cf.app(MIRROR)["env"]["REGISTRY_STORAGE_S3_ACCESSKEY"] == "AKIAROTATEDSTANDIN"

    run = runner.run("rollback.ipynb", params, component="registry", confirm_rollback=True)
    assert run.returncode == 0, run.stderr[-2000:]
    mirror = cf.app(MIRROR)
    assert mirror["droplet_guid"] == first
    assert mirror["env"]["REGISTRY_STORAGE_S3_ACCESSKEY"] == "AKIAROTATEDSTANDIN"  # not the revision's key
    assert mirror["env"]["REGISTRY_LOG_LEVEL"] == "info"  # the revision's configuration is back
    assert mirror["state"] == "STARTED" and "serves" in run.outputs()
    assert annotation(cf, MIRROR) is None  # the next deploy applies the params again


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
        docker_hub: Hub, tmp_path: Path, cf_env: dict[str, str], name: str, foundation: dict,
        cf_params: dict, says: str) -> None:
    with fake(**foundation) as cf:
        runner = CfRunner(tmp_path, docker_hub, cf, cf_env)
        run = runner.run("deploy.ipynb", runner.params("production", **cf_params))
        assert run.returncode != 0, name
        assert says in run.stderr, run.stderr[-2000:]
        assert "preflight failed, nothing was changed" in run.stderr
        assert [r for r in cf.requests if r.mutating] == []


def test_an_old_cc_deploys_without_options_when_one_at_a_time_is_asked(docker_hub: Hub, tmp_path: Path,
                                                                      cf_env: dict[str, str]) -> None:
    with fake(cc_version="3.150.0") as cf:
        runner = CfRunner(tmp_path, docker_hub, cf, cf_env)
        run = runner.run("deploy.ipynb", runner.params("production", max_in_flight=1), component="registry")
        assert run.returncode == 0, run.stderr[-2000:]
        [deployment] = [r for r in cf.requests if r.method == "POST" and r.path == "/v3/deployments"]
        assert "options" not in deployment.body


# ------------------------------------------------------------------------------ the mirror image's own pull

def test_the_registry_image_is_pulled_with_the_accounts_credentials(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("staging")
    params["registry"] |= {"image_pull_username": "cloudgovpull", "image_pull_password_env": "TEST_IMAGE_PULL_TOKEN"}
    missing = runner.run("deploy.ipynb", params, component="registry")
    assert missing.returncode != 0 and "TEST_IMAGE_PULL_TOKEN" in missing.stderr
    assert [r for r in cf.requests if r.mutating] == []
    runner.env["TEST_IMAGE_PULL_TOKEN"] = "image-pull-token-DO-NOT-LEAK"
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode == 0, run.stderr[-2000:]
    [package] = [r.body for r in cf.requests if r.method == "POST" and r.path == "/v3/packages"]
    assert package["data"]["username"] == "cloudgovpull"
    assert "image-pull-token-DO-NOT-LEAK" not in run.notebook.read_text() + run.stderr


def test_a_failed_package_stops_the_deploy_with_cfs_error(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    cf.faults.package_processing_fails = True
    run = runner.run("deploy.ipynb", runner.params("staging"), component="proxy")
    assert run.returncode != 0
    assert "FAILED: Package upload failed" in run.stderr
    assert "POST /v3/builds" not in mutating(cf)


# ------------------------------------------------------------------------------ calls

class FakeClock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def session_on(cf: FakeCloudFoundry, clock: FakeClock) -> CfSession:
    return CfSession(cf.url, CfCredentials("password", CF_USER, Secret("CF_PASSWORD", CF_PASSWORD)),
                     sleep=clock.sleep, clock=clock.clock)


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
