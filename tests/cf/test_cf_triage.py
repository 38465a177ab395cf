"""incident_triage.ipynb on Cloud Foundry (the CC stand-in, the deployed proxy behind the edge
stand-ins, registry 3.0.0 as the mirror app): a stuck deployment, crashing mirrors, a missing
network policy; each named, and the gated remedy fixes what the API can fix."""
from __future__ import annotations

import re
from typing import Any

from tests.cf.conftest import CfRunner, cc_session, public_route
from tests.fakes.cf_api import FakeCloudFoundry

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MIRROR = "docker-registry-mirror"
PANIC = "panic: s3aws: SignatureDoesNotMatch: The request signature we calculated does not match"


def mutating(cf: FakeCloudFoundry) -> list[str]:
    return [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.mutating and r.status < 400]


def triage(runner: CfRunner, params: dict, mirror_app: str, **options: Any) -> tuple[int, str, str]:
    with public_route(runner.cf, mirror_app) as edge:
        run = runner.run("incident_triage.ipynb", params, public_url=edge.public_url,
                         output_dir=str(runner.tmp / "triage"), **options)
    text = run.outputs()
    verdict = next((line for line in text.splitlines() if line.startswith(("BROKEN", "HEALTHY", "FIXED", "NOT FIXED"))),
                   run.stderr[-1500:])
    return run.returncode, text, verdict


def test_a_healthy_deployment_is_healthy(runner: CfRunner, cf: FakeCloudFoundry, mirror_app: str) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params).returncode == 0
    code, text, verdict = triage(runner, params, mirror_app)
    assert code == 0 and verdict.startswith("HEALTHY"), text[-2000:]


def test_a_stuck_deployment_is_named_and_cancelled_behind_the_gate(runner: CfRunner, cf: FakeCloudFoundry,
                                                                    mirror_app: str) -> None:
    params = runner.params("staging", deploy_timeout_seconds=2)
    assert runner.run("deploy.ipynb", params).returncode == 0
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 3
    assert runner.run("deploy.ipynb", params, component="registry").returncode != 0  # staging leaves it ACTIVE
    cf.clear_requests()
    code, text, verdict = triage(runner, params, mirror_app, stuck_minutes=0.0)
    assert code == 0 and verdict.startswith("BROKEN LAYER: deployments."), verdict
    assert "a deployment is stuck in progress: docker-registry-mirror" in verdict and "cancel-deployment" in verdict
    assert mutating(cf) == []  # diagnosis only: not one change

    code, text, verdict = triage(runner, params, mirror_app, stuck_minutes=0.0, apply_remedy=True)
    assert code == 0, text[-2000:]
    assert mutating(cf) == ["POST /v3/deployments/:guid/actions/cancel"]
    assert "FIXED by cancel-deployment" in text
    assert [(d["status_value"], d["status_reason"]) for d in cf.deployments(MIRROR)][-1] == ("FINALIZED", "CANCELED")


def test_mirrors_crashing_on_their_s3_key_are_named_with_diego_s_reason(runner: CfRunner, cf: FakeCloudFoundry,
                                                                         mirror_app: str) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params).returncode == 0
    cf.faults.crash_when = lambda env, image: PANIC if image else None
    session = cc_session(cf)
    app = cf.app(MIRROR)["guid"]
    for action in ("stop", "start"):  # a restart: the same droplet, now panicking at start
        assert session.post(f"{cf.url}/v3/apps/{app}/actions/{action}", timeout=10).status_code == 200
    code, text, verdict = triage(runner, params, mirror_app)
    assert code == 0
    assert verdict.startswith("BROKEN LAYER: mirror instances."), verdict
    assert "S3 rejects the credentials they run with (SignatureDoesNotMatch)" in verdict


def test_a_missing_network_policy_is_named_and_the_proxy_redeploy_restores_it(
        runner: CfRunner, cf: FakeCloudFoundry, mirror_app: str) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params).returncode == 0
    session = cc_session(cf)
    proxy, mirror = cf.app("docker-registry-proxy")["guid"], cf.app(MIRROR)["guid"]
    policies = session.get(f"{cf.url}/networking/v1/external/policies", params={"id": proxy}, timeout=10).json()
    assert session.post(f"{cf.url}/networking/v1/external/policies/delete", json=policies,
                        timeout=10).status_code == 200
    code, text, verdict = triage(runner, params, mirror_app)
    assert verdict.startswith("BROKEN LAYER: security proxy -> mirror."), verdict
    assert "no network policy lets it" in verdict and "redeploy-proxy" in verdict
    cf.clear_requests()
    code, text, verdict = triage(runner, params, mirror_app, apply_remedy=True)
    assert code == 0, text[-2000:]
    assert "POST /networking/v1/external/policies" in mutating(cf)
    assert "FIXED by redeploy-proxy" in text
    assert any(p["destination"]["id"] == mirror for p in cf.policies())


def test_scale_mirrors_adds_instances_and_is_refused_during_a_deployment(runner: CfRunner, cf: FakeCloudFoundry,
                                                                          mirror_app: str) -> None:
    params = runner.params("staging", deploy_timeout_seconds=2)
    assert runner.run("deploy.ipynb", params).returncode == 0
    cf.clear_requests()
    code, text, _ = triage(runner, params, mirror_app, remedy="scale-mirrors", scale_to=3, apply_remedy=True)
    assert code == 0, text[-2000:]
    assert mutating(cf) == ["POST /v3/processes/:guid/actions/scale"]
    assert "APPLIED scale-mirrors: the same checks pass again" in text
    assert cf.app(MIRROR)["instances"] == 3

    # CC refuses to scale while a deployment is in flight: the run fails with CC's words, nothing else moves.
    cf.faults.deployment_never_healthy = True
    params["registry"]["instances"] = 4
    assert runner.run("deploy.ipynb", params, component="registry").returncode != 0
    cf.clear_requests()
    with public_route(runner.cf, mirror_app) as edge:
        run = runner.run("incident_triage.ipynb", params, public_url=edge.public_url, remedy="scale-mirrors",
                         scale_to=5, apply_remedy=True, output_dir=str(runner.tmp / "refused"))
    assert run.returncode != 0 and "Cannot scale this process while a deployment is in flight" in run.stderr
    assert mutating(cf) == []
