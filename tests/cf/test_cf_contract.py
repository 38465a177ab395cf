"""Our client's requests, and the stand-in's answers to them, checked against the CC v3 contract
(../shared/contracts) for every operation the contract covers, over a whole deploy and rollback."""
from __future__ import annotations

import pytest

from registry_mirror.platforms.cloudfoundry import CloudFoundryPlatform
from registry_mirror.platforms.cloudfoundry.session import CfCredentials, CfSession
from registry_mirror.credentials import Secret
from registry_mirror.parameters import validate_settings
from tests.cf.conftest import CF_PASSWORD, CF_USER, CfRunner
from tests.fakes.cf_api import FakeCloudFoundry
from tests.fakes.test_cf_stand_in import CONTRACT_PATH, Contract, load_contract


@pytest.fixture(scope="module")
def contract() -> Contract:
    loaded = load_contract()  # fails in CI when the contract is missing
    if loaded is None:
        pytest.skip(f"no CC v3 contract at {CONTRACT_PATH} (shared/ is not beside the project)")
    return loaded


def test_deploy_and_rollback_requests_follow_the_contract(runner: CfRunner, cf: FakeCloudFoundry,
                                                          contract: Contract, monkeypatch) -> None:
    monkeypatch.setenv("TEST_DOCKERHUB_TOKEN", runner.env["TEST_DOCKERHUB_TOKEN"])
    params = runner.params("production")
    settings = validate_settings(params, source="test")
    session = CfSession(cf.url, CfCredentials("password", CF_USER, Secret("CF_PASSWORD", CF_PASSWORD)))
    session.login()
    checked: list[str] = []

    def check(response, *args, **kwargs):  # type: ignore[no-untyped-def]
        contract.check(response)
        checked.append(f"{response.request.method} {response.status_code}")

    session.http.hooks["response"].append(check)
    platform = CloudFoundryPlatform(settings, settings.load_security_rules(), session=session)
    assert platform.preflight().ok
    platform.deploy(component="all")
    mirror = platform.space.app("registry")
    assert mirror is not None
    session.send("POST", f"/v3/apps/{mirror['guid']}/actions/stop")  # `cf stop`, then the runbook starts it
    session.send("POST", f"/v3/apps/{mirror['guid']}/actions/start")
    params["registry"]["instances"] = 5
    CloudFoundryPlatform(validate_settings(params, source="test"), settings.load_security_rules(),
                         session=session).deploy(component="registry")
    platform.rollback(component="registry", dry_run=False)
    covered = {op for op in contract.validated}
    # The operations a deploy and a rollback use that the contract describes were all checked.
    assert {("POST", "/v3/packages"), ("POST", "/v3/builds"), ("POST", "/v3/deployments"),
            ("GET", "/v3/deployments/{guid}"), ("PATCH", "/v3/apps/{guid}/environment_variables"),
            ("GET", "/v3/apps/{guid}/revisions"), ("PATCH", "/v3/apps/{guid}"), ("GET", "/v3/processes/{guid}/stats"),
            ("GET", "/v3/feature_flags/{name}"), ("GET", "/v3/roles"), ("GET", "/v3/organization_quotas/{guid}"),
            ("GET", "/v3/organizations/{guid}/usage_summary"), ("GET", "/v3/audit_events"),
            ("POST", "/v3/apps/{guid}/actions/stop"), ("POST", "/v3/apps/{guid}/actions/start"),
            ("GET", "/v3/revisions/{guid}/environment_variables")} <= covered, covered
    assert checked
