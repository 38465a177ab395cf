"""CloudFoundryPlatform as the runbooks see it through the Platform protocol: status through a
lifecycle, down (stop both apps, keep them), and what a CF platform does not do here."""
from __future__ import annotations

import re

import pytest

from registry_mirror.errors import DeployError, ParameterError
from registry_mirror.platforms.base import COMPONENTS, Platform
from registry_mirror.platforms.registry import platform_for
from tests.cf.conftest import Foundation, assert_no_secret
from tests.cf.runbooks import deploy_runbook
from tests.fakes.cf_api import FakeCloudFoundry

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
APPS = ("docker-registry-mirror", "docker-registry-proxy")


def mutating(cf: FakeCloudFoundry) -> list[str]:
    return [f"{r.method} {GUID.sub(':guid', r.path)}" for r in cf.requests if r.mutating and r.status < 400]


def test_the_registry_opens_it_by_name_and_it_offers_the_protocol(foundation: Foundation) -> None:
    settings_params = foundation.params("staging")
    platform = foundation.platform(settings_params)
    assert isinstance(platform, Platform)
    assert type(platform_for(platform.settings, platform.rules)) is type(platform)
    assert platform.name == "cloudfoundry" and platform.components == COMPONENTS
    assert platform.public_url == "https://docker-registry-staging.app.cloud.gov"
    assert platform.verification_pull("docker.io/library/hello:latest") is None
    with pytest.raises(ParameterError, match="drill.ipynb breaks things on purpose: it runs on the local "
                                             "platform only \\(platform is 'cloudfoundry'\\)"):
        platform.faults()
    assert list(platform.api_calls().columns) == ["method", "path", "status", "request_id", "sent"]


def test_status_down_and_up_again(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    params = foundation.params("staging")
    platform = foundation.platform(params)
    status = platform.status()
    assert status.condition.startswith("NOT DEPLOYED") and not status.healthy
    assert list(status.processes["state"]) == ["absent", "absent"]

    deploy_runbook(platform)
    status = platform.status()
    assert status.condition == "RUNNING: docker-registry-mirror 2/2, docker-registry-proxy 2/2", status
    assert list(status.processes["running"]) == [2, 2]
    revisions = {app: cf.revisions(app) for app in APPS}

    cf.clear_requests()
    plan = platform.down(dry_run=True)
    assert mutating(cf) == [] and plan.verdict().startswith("DRY RUN: 2 step(s)")
    down = platform.down()
    assert mutating(cf) == ["POST /v3/apps/:guid/actions/stop"] * 2
    assert [r.path for r in cf.requests if r.mutating][0].endswith(cf.app("docker-registry-proxy")["guid"]
                                                                   + "/actions/stop")  # the proxy first
    assert down.verdict() == "STOPPED: 2 process(es)"
    assert all(cf.app(app)["state"] == "STOPPED" and cf.app(app)["droplet_guid"] for app in APPS)
    assert {app: cf.revisions(app) for app in APPS} == revisions  # kept: a rollback still has them
    status = platform.status()
    assert status.condition.startswith("STOPPED: docker-registry-mirror, docker-registry-proxy stopped"), status
    assert list(status.processes["running"]) == [0, 0]

    cf.clear_requests()
    again = platform.down()
    assert mutating(cf) == [] and {s.detail for s in again.steps} == {"already stopped"}

    # Stopped is not serving: the same inputs deploy again, and both apps serve.
    deploy_runbook(platform)
    assert platform.status().condition.startswith("RUNNING"), platform.status()
    assert "POST /v3/deployments" in mutating(cf)
    assert_no_secret(repr(platform.status()), platform.api_calls().to_string())


def test_down_refuses_a_space_that_does_not_exist(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    platform = foundation.platform(foundation.params("staging", space="no-such-space"))
    with pytest.raises(DeployError, match="space cloud-gov/no-such-space not found"):
        platform.down()
    assert [r for r in cf.requests if r.mutating] == []


def test_cancel_deployments_with_nothing_active_changes_nothing(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    platform = foundation.platform(foundation.params("staging"))
    deploy_runbook(platform, component="registry")
    cf.clear_requests()
    report = platform.cancel_deployments()
    assert report.steps == [] and mutating(cf) == []
    assert platform.remedy("cancel-deployment") == "no active deployment to cancel"


def test_usage_says_where_clients_point_without_asking_cf(foundation: Foundation, cf: FakeCloudFoundry) -> None:
    platform = foundation.platform(foundation.params("production"))
    text = platform.usage()
    assert "https://docker-registry.app.cloud.gov" in text
    assert '"registry-mirrors": ["https://docker-registry.app.cloud.gov"]' in text
    assert "hosts.toml" in text and "registries.conf" in text
    assert cf.requests == []
