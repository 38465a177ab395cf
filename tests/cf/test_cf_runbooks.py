"""deploy.ipynb and rollback.ipynb on Cloud Foundry, run by papermill against the CF API stand-in.

Each test asserts the exit code, the sequence of mutating calls the stand-in recorded, and the
final state it holds."""
from __future__ import annotations

import re

import pytest

from tests.cf.conftest import CF_PASSWORD, HUB_TOKEN, CfRunner
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


def test_clean_deploy_then_redeploy_with_no_change(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("staging")
    first = runner.run("deploy.ipynb", params)
    assert first.returncode == 0, first.stderr[-3000:]
    assert mutating(cf) == S3_CREATE + MIRROR_DEPLOY + PROXY_DEPLOY + POLICY
    assert deployments(cf, "docker-registry-mirror") == [("FINALIZED", "DEPLOYED")]
    assert deployments(cf, "docker-registry-proxy") == [("FINALIZED", "DEPLOYED")]
    mirror = cf.app("docker-registry-mirror")
    assert mirror["state"] == "STARTED"
    assert all(u.endswith(".apps.internal") for u in mirror["routes"])
    assert mirror["env"]["REGISTRY_STORAGE_S3_SECRETKEY"] == "fake-s3-secret-DO-NOT-LEAK"
    [policy] = cf.policies()
    assert policy["destination"]["protocol"] == "tcp" and policy["destination"]["ports"]["start"] == 5000
    assert "DEPLOYED: endpoint" in first.outputs()

    cf.clear_requests()
    second = runner.run("deploy.ipynb", params)
    assert second.returncode == 0, second.stderr[-3000:]
    assert mutating(cf) == []
    assert "UNCHANGED" in second.outputs()


def test_dry_run_makes_no_mutating_call(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    run = runner.run("deploy.ipynb", runner.params("staging"), dry_run=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r for r in cf.requests if r.mutating] == []
    assert "DRY RUN" in run.outputs()


def test_component_registry_deploys_only_the_mirror(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    run = runner.run("deploy.ipynb", runner.params("staging"), component="registry")
    assert run.returncode == 0, run.stderr[-3000:]
    assert mutating(cf) == S3_CREATE + MIRROR_DEPLOY
    assert cf.app("docker-registry-proxy") is None


def test_build_failure_in_staging_stops_and_leaves_state(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    cf.faults.build_fails = True
    run = runner.run("deploy.ipynb", runner.params("staging"), component="registry")
    assert run.returncode != 0
    assert "build failed" in run.stderr and "on_failure: stop" in run.stderr
    assert "POST /v3/deployments" not in mutating(cf)
    assert not any(r.path.endswith("/actions/cancel") for r in cf.requests)


def test_build_failure_in_production_keeps_the_previous_droplet_serving(runner: CfRunner,
                                                                        cf: FakeCloudFoundry) -> None:
    params = runner.params("production")
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    before = cf.app("docker-registry-mirror")["droplet_guid"]
    cf.faults.build_fails = True
    params["registry"]["instances"] = 6  # a change, so the deploy does not skip as unchanged
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode != 0
    assert "build failed" in run.stderr and f"previous droplet {before} serves again" in run.stderr
    assert cf.app("docker-registry-mirror")["droplet_guid"] == before


def test_deployment_timeout_in_staging_leaves_the_deployment_for_debugging(runner: CfRunner,
                                                                          cf: FakeCloudFoundry) -> None:
    params = runner.params("staging", deploy_timeout_seconds=2)
    cf.faults.deployment_never_healthy = True
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0  # stopped app: at once
    params["registry"]["instances"] = 3
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode != 0
    assert "left ACTIVE for debugging" in run.stderr
    assert deployments(cf, "docker-registry-mirror")[-1] == ("ACTIVE", "DEPLOYING")
    assert not any(r.path.endswith("/actions/cancel") for r in cf.requests)


def test_deployment_timeout_in_production_cancels_back(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("production", deploy_timeout_seconds=2)
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    before = cf.app("docker-registry-mirror")["droplet_guid"]
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 3
    run = runner.run("deploy.ipynb", params, component="registry")
    assert run.returncode != 0
    assert "cancelled" in run.stderr and f"previous droplet {before} serves again" in run.stderr
    assert deployments(cf, "docker-registry-mirror")[-1] == ("FINALIZED", "CANCELED")
    assert cf.app("docker-registry-mirror")["droplet_guid"] == before


def test_token_expiry_mid_deploy_is_refreshed(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    cf.faults.expire_token_after = 15
    run = runner.run("deploy.ipynb", runner.params("staging"))
    assert run.returncode == 0, run.stderr[-3000:]
    grants = [r.body.get("grant_type") for r in cf.requests if r.path.endswith("/oauth/token")]
    assert "refresh_token" in grants
    assert deployments(cf, "docker-registry-proxy") == [("FINALIZED", "DEPLOYED")]


def test_transient_502_and_429_are_retried(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    cf.faults.transient_502 = 3
    cf.faults.rate_limited_429 = 2
    run = runner.run("deploy.ipynb", runner.params("staging"), component="registry")
    assert run.returncode == 0, run.stderr[-3000:]
    assert {r.status for r in cf.requests} >= {502, 429}
    assert mutating(cf) == S3_CREATE + MIRROR_DEPLOY


def test_missing_space_stops_before_any_change(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    run = runner.run("deploy.ipynb", runner.params("staging", space="no-such-space"))
    assert run.returncode != 0
    assert "no-such-space" in run.stderr
    assert [r for r in cf.requests if r.mutating] == []


def test_wrong_credentials_stop_before_any_change(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    runner.env["CF_PASSWORD"] = "wrong"
    run = runner.run("deploy.ipynb", runner.params("staging"))
    assert run.returncode != 0
    assert "login as deployer failed" in run.stderr
    assert [r for r in cf.requests if r.mutating] == []


def test_rollback_cancels_an_active_deployment(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("staging", deploy_timeout_seconds=2)
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 3
    assert runner.run("deploy.ipynb", params, component="registry").returncode != 0
    cf.clear_requests()
    plan = runner.run("rollback.ipynb", params)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert [r for r in cf.requests if r.mutating] == []
    assert "actions/cancel" in plan.outputs()
    run = runner.run("rollback.ipynb", params, confirm_rollback=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert mutating(cf) == ["POST /v3/deployments/:guid/actions/cancel"]
    assert deployments(cf, "docker-registry-mirror")[-1] == ("FINALIZED", "CANCELED")


def test_rollback_redeploys_the_previous_revision(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("production")
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
    first = cf.app("docker-registry-mirror")["droplet_guid"]
    params["registry"]["instances"] = 5
    assert runner.run("deploy.ipynb", params, component="registry").returncode == 0
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


@pytest.mark.parametrize("scenario", ["deploy", "failure"])
def test_no_secret_in_notebooks_logs_or_errors(runner: CfRunner, cf: FakeCloudFoundry, scenario: str) -> None:
    if scenario == "failure":
        cf.faults.build_fails = True
    run = runner.run("deploy.ipynb", runner.params("staging"))
    secrets = [CF_PASSWORD, HUB_TOKEN, "fake-s3-secret-DO-NOT-LEAK", "AKIAFAKESTANDIN"]
    texts = [run.notebook.read_text(), run.stderr]
    for secret in secrets:
        for text in texts:
            assert secret not in text
