"""Incident triage on Cloud Foundry (the CC stand-in, the deployed proxy behind the edge stand-ins,
registry 3.0.0 as the mirror app): a stuck deployment, crashing mirrors, a missing network policy;
each named, and the gated remedy fixes what the API can fix. The walk runs in-process through the
runbook's own functions; one papermill run of incident_triage.ipynb proves the notebook."""
from __future__ import annotations

import re
from typing import Any

import pytest

from registry_mirror.errors import DeployError
from tests.cf.conftest import CfRunner, Foundation, assert_no_secret, cc_session, public_route
from tests.cf.runbooks import Triaged, deploy_runbook, triage_runbook
from tests.fakes.cf_api import FakeCloudFoundry

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MIRROR = "docker-registry-mirror"
PANIC = "panic: s3aws: SignatureDoesNotMatch: The request signature we calculated does not match"


def mutating(cf: FakeCloudFoundry) -> list[str]:
    return [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.mutating and r.status < 400]


def triage(foundation: Foundation, params: dict, mirror_app: str, **options: Any) -> Triaged:
    with public_route(foundation.cf, mirror_app) as edge:
        walked = triage_runbook(params, output_dir=foundation.tmp / "triage", public_url=edge.public_url, **options)
    assert_no_secret(walked.text)
    return walked


def test_a_healthy_deployment_is_healthy(foundation: Foundation, cf: FakeCloudFoundry, mirror_app: str) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params))
    walked = triage(foundation, params, mirror_app)
    assert walked.diagnosis.startswith("HEALTHY"), walked.text[-2000:]


def test_a_stuck_deployment_is_named_and_cancelled_behind_the_gate(foundation: Foundation, cf: FakeCloudFoundry,
                                                                    mirror_app: str) -> None:
    params = foundation.params("staging", deploy_timeout_seconds=8)
    deploy_runbook(foundation.platform(params))
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 3
    with pytest.raises(DeployError):  # staging leaves it ACTIVE
        deploy_runbook(foundation.platform(params), component="registry")
    cf.clear_requests()
    walked = triage(foundation, params, mirror_app, stuck_minutes=0.0)
    verdict = walked.diagnosis
    assert verdict.startswith("BROKEN LAYER: deployments."), verdict
    assert "a deployment is stuck in progress: docker-registry-mirror" in verdict and "cancel-deployment" in verdict
    assert mutating(cf) == []  # diagnosis only: not one change

    walked = triage(foundation, params, mirror_app, stuck_minutes=0.0, apply=True)
    assert mutating(cf) == ["POST /v3/deployments/:guid/actions/cancel"]
    assert "FIXED by cancel-deployment" in walked.text
    assert [(d["status_value"], d["status_reason"]) for d in cf.deployments(MIRROR)][-1] == ("FINALIZED", "CANCELED")


def test_mirrors_crashing_on_their_s3_key_are_named_with_diego_s_reason(foundation: Foundation,
                                                                         cf: FakeCloudFoundry, mirror_app: str) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params))
    cf.faults.crash_when = lambda env, image: PANIC if image else None
    session = cc_session(cf)
    app = cf.app(MIRROR)["guid"]
    for action in ("stop", "start"):  # a restart: the same droplet, now panicking at start
        assert session.post(f"{cf.url}/v3/apps/{app}/actions/{action}", timeout=10).status_code == 200
    verdict = triage(foundation, params, mirror_app).diagnosis
    assert verdict.startswith("BROKEN LAYER: mirror instances."), verdict
    assert "S3 rejects the credentials they run with (SignatureDoesNotMatch)" in verdict


def test_a_missing_network_policy_is_named_and_the_proxy_redeploy_restores_it(
        foundation: Foundation, cf: FakeCloudFoundry, mirror_app: str) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params))
    session = cc_session(cf)
    proxy, mirror = cf.app("docker-registry-proxy")["guid"], cf.app(MIRROR)["guid"]
    policies = session.get(f"{cf.url}/networking/v1/external/policies", params={"id": proxy}, timeout=10).json()
    assert session.post(f"{cf.url}/networking/v1/external/policies/delete", json=policies,
                        timeout=10).status_code == 200
    verdict = triage(foundation, params, mirror_app).diagnosis
    assert verdict.startswith("BROKEN LAYER: security proxy -> mirror."), verdict
    assert "no network policy lets it" in verdict and "redeploy-proxy" in verdict
    cf.clear_requests()
    walked = triage(foundation, params, mirror_app, apply=True)
    assert "POST /networking/v1/external/policies" in mutating(cf)
    assert "FIXED by redeploy-proxy" in walked.text
    assert any(p["destination"]["id"] == mirror for p in cf.policies())


def test_scale_mirrors_adds_instances_and_is_refused_during_a_deployment(foundation: Foundation,
                                                                         cf: FakeCloudFoundry, mirror_app: str) -> None:
    params = foundation.params("staging", deploy_timeout_seconds=8)
    deploy_runbook(foundation.platform(params))
    cf.clear_requests()
    walked = triage(foundation, params, mirror_app, remedy="scale-mirrors", scale_to=3, apply=True)
    assert mutating(cf) == ["POST /v3/processes/:guid/actions/scale"]
    assert "APPLIED scale-mirrors: the same checks pass again" in walked.text
    assert cf.app(MIRROR)["instances"] == 3

    # CC refuses to scale while a deployment is in flight: the remedy names that deployment in one
    # sentence before it sends anything.
    start_a_deployment_that_never_ends(foundation, cf, params)
    with pytest.raises(DeployError, match=r"deployment \S+ of docker-registry-mirror is in flight"):
        triage(foundation, params, mirror_app, remedy="scale-mirrors", scale_to=5, apply=True)
    assert [r for r in cf.requests if r.mutating] == []


@pytest.mark.notebooks
def test_the_notebook_exits_non_zero_when_the_remedy_is_refused(foundation: Foundation, runner: CfRunner,
                                                                cf: FakeCloudFoundry, mirror_app: str) -> None:
    """The one papermill run of incident_triage.ipynb on CF: it walks every layer, the remedy CC would
    refuse fails the run non-zero naming the deployment in flight, nothing moves, and no secret reaches
    the notebook."""
    params = foundation.params("staging", deploy_timeout_seconds=8)
    deploy_runbook(foundation.platform(params))
    start_a_deployment_that_never_ends(foundation, cf, params)
    with public_route(cf, mirror_app) as edge:
        run = runner.run("incident_triage.ipynb", params, public_url=edge.public_url, remedy="scale-mirrors",
                         scale_to=5, apply_remedy=True, output_dir=str(runner.tmp / "refused"))
    assert run.returncode != 0 and "of docker-registry-mirror is in flight" in run.stderr
    assert "recent errors:" in run.outputs()  # the walk ran to its last layer and was shown before the remedy
    assert [r for r in cf.requests if r.mutating] == []
    run.assert_no_secret()


def start_a_deployment_that_never_ends(foundation: Foundation, cf: FakeCloudFoundry, params: dict) -> None:
    """A staging deploy whose deployment stays ACTIVE (left for debugging); the stand-in's log cleared."""
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 4
    with pytest.raises(DeployError):
        deploy_runbook(foundation.platform(params), component="registry")
    cf.clear_requests()
