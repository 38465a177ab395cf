"""The deploy and rollback runbooks on Cloud Foundry, against the CF API stand-in.

Each test asserts the outcome, the sequence of mutating calls the stand-in recorded, and the final
state it holds. They run the runbooks' cells in-process on a fake clock (tests/cf/runbooks.py); one
papermill run of each notebook proves the notebook: its exit code and that no secret reaches it."""
from __future__ import annotations

import re

import pytest

from registry_mirror.errors import DeployError, PreflightError
from tests.cf.conftest import CfRunner, Foundation, assert_no_secret
from tests.cf.runbooks import deploy_runbook, rollback_runbook
from tests.support import first_screen
from tests.fakes.cf_api import FakeCloudFoundry

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

APP_DEPLOY = ["POST /v3/spaces/:guid/actions/apply_manifest"]
MIRROR_DEPLOY = [
    "POST /v3/spaces/:guid/actions/apply_manifest",
    "PATCH /v3/apps/:guid/environment_variables",  # S3 keys and the upstream token
    "POST /v3/packages",
    "POST /v3/builds",
    "POST /v3/deployments",
    "PATCH /v3/apps/:guid",  # the fingerprint annotation, once instances serve
]
PROXY_DEPLOY = [
    "POST /v3/spaces/:guid/actions/apply_manifest",
    "POST /v3/packages",
    "POST /v3/packages/:guid/upload",
    "POST /v3/builds",
    "POST /v3/deployments",
    "PATCH /v3/apps/:guid",
]
S3_CREATE = ["POST /v3/service_instances", "POST /v3/service_credential_bindings"]
POLICY = ["POST /networking/v1/external/policies"]


def mutating(cf: FakeCloudFoundry) -> list[str]:
    return [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.mutating and r.status < 400]


def deployments(cf: FakeCloudFoundry, app: str) -> list[tuple[str, str]]:
    return [(d["status_value"], d["status_reason"]) for d in cf.deployments(app)]


def test_clean_deploy_then_redeploy_with_no_change(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging")
    first = deploy_runbook(foundation.platform(params))
    assert mutating(cf) == S3_CREATE + MIRROR_DEPLOY + PROXY_DEPLOY + POLICY
    assert deployments(cf, "docker-registry-mirror") == [("FINALIZED", "DEPLOYED")]
    assert deployments(cf, "docker-registry-proxy") == [("FINALIZED", "DEPLOYED")]
    mirror = cf.app("docker-registry-mirror")
    assert mirror["state"] == "STARTED"
    assert all(u.endswith(".apps.internal") for u in mirror["routes"])
    assert mirror["env"]["REGISTRY_STORAGE_S3_SECRETKEY"] == "fake-s3-secret-DO-NOT-LEAK"
    [policy] = cf.policies()
    assert policy["destination"]["protocol"] == "tcp" and policy["destination"]["ports"]["start"] == 5000
    assert "DEPLOYED: endpoint" in first.text
    assert "RUNNING: docker-registry-mirror 2/2, docker-registry-proxy 2/2" in first.text
    assert_no_secret(first.text)  # what the notebook shows of a deploy that set every secret

    cf.clear_requests()
    second = deploy_runbook(foundation.platform(params))
    assert mutating(cf) == []
    assert "UNCHANGED" in second.text


def test_dry_run_makes_no_mutating_call(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    run = deploy_runbook(foundation.platform(foundation.params("staging")), dry_run=True)
    assert [r for r in cf.requests if r.mutating] == []
    assert "DRY RUN" in run.text


def test_component_registry_deploys_only_the_mirror(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    deploy_runbook(foundation.platform(foundation.params("staging")), component="registry")
    assert mutating(cf) == S3_CREATE + MIRROR_DEPLOY
    assert cf.app("docker-registry-proxy") is None


def test_build_failure_in_staging_stops_and_leaves_state(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    cf.faults.build_fails = True
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(foundation.params("staging")), component="registry")
    assert "build failed" in str(failed.value) and "on_failure: stop" in str(failed.value)
    assert "POST /v3/deployments" not in mutating(cf)
    assert not any(r.path.endswith("/actions/cancel") for r in cf.requests)


def test_build_failure_in_production_keeps_the_previous_droplet_serving(foundation: Foundation,
                                                                        cf: FakeCloudFoundry) -> None:
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    before = cf.app("docker-registry-mirror")["droplet_guid"]
    cf.faults.build_fails = True
    params["registry"]["instances"] = 6  # a change, so the deploy does not skip as unchanged
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert "build failed" in str(failed.value) and f"previous droplet {before} serves again" in str(failed.value)
    assert cf.app("docker-registry-mirror")["droplet_guid"] == before


def test_deployment_timeout_in_staging_leaves_the_deployment_for_debugging(foundation: Foundation,
                                                                          cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging", deploy_timeout_seconds=8)
    cf.faults.deployment_never_healthy = True
    deploy_runbook(foundation.platform(params), component="registry")  # a stopped app: finalized at once
    params["registry"]["instances"] = 3
    with pytest.raises(DeployError, match="left ACTIVE for debugging"):
        deploy_runbook(foundation.platform(params), component="registry")
    assert deployments(cf, "docker-registry-mirror")[-1] == ("ACTIVE", "DEPLOYING")
    assert not any(r.path.endswith("/actions/cancel") for r in cf.requests)


def test_deployment_timeout_in_production_cancels_back(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("production", deploy_timeout_seconds=8)
    deploy_runbook(foundation.platform(params), component="registry")
    before = cf.app("docker-registry-mirror")["droplet_guid"]
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 3
    with pytest.raises(DeployError) as failed:
        deploy_runbook(foundation.platform(params), component="registry")
    assert "cancelled" in str(failed.value) and f"previous droplet {before} serves again" in str(failed.value)
    assert deployments(cf, "docker-registry-mirror")[-1] == ("FINALIZED", "CANCELED")
    assert cf.app("docker-registry-mirror")["droplet_guid"] == before


def test_token_expiry_mid_deploy_is_refreshed(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    cf.faults.expire_token_after = 15
    deploy_runbook(foundation.platform(foundation.params("staging")))
    grants = [r.body.get("grant_type") for r in cf.requests if r.path.endswith("/oauth/token")]
    assert "refresh_token" in grants
    assert deployments(cf, "docker-registry-proxy") == [("FINALIZED", "DEPLOYED")]


def test_transient_502_and_429_are_retried(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    cf.faults.transient_502 = 3
    cf.faults.rate_limited_429 = 2
    deploy_runbook(foundation.platform(foundation.params("staging")), component="registry")
    assert {r.status for r in cf.requests} >= {502, 429}
    assert mutating(cf) == S3_CREATE + MIRROR_DEPLOY
    assert 1.0 in foundation.clock.sleeps  # the 429's Retry-After, waited on the fake clock


def test_missing_space_stops_before_any_change(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    with pytest.raises(PreflightError, match="no-such-space"):
        deploy_runbook(foundation.platform(foundation.params("staging", space="no-such-space")))
    assert [r for r in cf.requests if r.mutating] == []


def test_wrong_credentials_stop_before_any_change(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    with pytest.raises(PreflightError, match="login as deployer failed") as failed:
        deploy_runbook(foundation.platform(foundation.params("staging"), password="wrong"))
    assert [r for r in cf.requests if r.mutating] == []
    assert_no_secret(str(failed.value))


def test_rollback_cancels_an_active_deployment(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging", deploy_timeout_seconds=8)
    deploy_runbook(foundation.platform(params), component="registry")
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 3
    with pytest.raises(DeployError):
        deploy_runbook(foundation.platform(params), component="registry")
    cf.clear_requests()
    plan, _ = rollback_runbook(foundation.platform(params))
    assert [r for r in cf.requests if r.mutating] == []
    assert "actions/cancel" in repr(plan)
    run, calls = rollback_runbook(foundation.platform(params), confirm=True)
    assert run.ok, run
    assert mutating(cf) == ["POST /v3/deployments/:guid/actions/cancel"]
    assert deployments(cf, "docker-registry-mirror")[-1] == ("FINALIZED", "CANCELED")
    assert "POST" in set(calls["method"])  # the calls table the notebook shows last


@pytest.mark.notebooks
def test_rollback_notebook_redeploys_the_previous_revision(foundation: Foundation, runner: CfRunner,
                                                           cf: FakeCloudFoundry) -> None:
    """The one papermill run of rollback.ipynb on CF: exit code, calls, state, and no secret in it."""
    params = foundation.params("production")
    deploy_runbook(foundation.platform(params), component="registry")
    first = cf.app("docker-registry-mirror")["droplet_guid"]
    params["registry"]["instances"] = 5
    deploy_runbook(foundation.platform(params), component="registry")
    assert cf.app("docker-registry-mirror")["droplet_guid"] != first
    cf.clear_requests()
    run = runner.run("rollback.ipynb", params, confirm_rollback=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # The first revision's configuration with today's credentials, then its droplet: never the
    # revision itself, which would bring back the credentials it captured.
    assert mutating(cf) == ["PATCH /v3/apps/:guid/environment_variables", "PATCH /v3/apps/:guid",
                            "POST /v3/deployments"]
    rollback = [r for r in cf.requests if r.method == "POST" and r.path == "/v3/deployments"][0]
    assert rollback.body["droplet"] == {"guid": first} and "revision" not in rollback.body
    assert cf.app("docker-registry-mirror")["droplet_guid"] == first
    run.assert_no_secret()
    # The executed notebook's HTML export opens on the verdict and the next runbook to run.
    screen = first_screen(run.notebook, runner.tmp / "screen")
    assert "DEPLOYED: endpoint" in screen and "verify_policies.ipynb" in screen


@pytest.mark.notebooks
def test_deploy_notebook_fails_non_zero_and_leaks_no_secret(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    """The one papermill run of deploy.ipynb on CF: a failing deploy (after the secrets were set) exits
    non-zero, and neither the executed notebook nor the log holds a secret. The pipeline's deploy task
    test (test_ci_tasks.py) runs the notebook to success under papermill."""
    cf.faults.build_fails = True
    run = runner.run("deploy.ipynb", runner.params("staging"))
    assert run.returncode != 0
    assert "build failed" in run.stderr and "on_failure: stop" in run.stderr
    assert "PATCH /v3/apps/:guid/environment_variables" in mutating(cf)  # the secrets were set before the build
    run.assert_no_secret()
