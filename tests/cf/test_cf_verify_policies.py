"""verify_policies.ipynb on Cloud Foundry (the stand-in): after a good deploy the route, policy,
pinning and config checks pass; each drift made through the API fails the check that proves it."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests

from tests.cf.conftest import CF_PASSWORD, CF_USER, RULES, CfRunner
from tests.fakes.cf_api import FakeCloudFoundry

API_CHECKS = {"push-refused-mirror", "mirror-not-exposed", "network-policy", "no-s3-redirect", "image-pinned",
              "upstream-credentials", "config-matches"}


class Cc:
    """A logged-in CC client for drifting the deployment behind the runbooks' back."""

    def __init__(self, cf: FakeCloudFoundry) -> None:
        token = requests.post(f"{cf.url}/login/oauth/token", auth=("cf", ""), timeout=10, data={
            "grant_type": "password", "username": CF_USER, "password": CF_PASSWORD}).json()["access_token"]
        self.url = cf.url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"bearer {token}"

    def call(self, method: str, path: str, **kwargs: object) -> dict:
        resp = self.session.request(method, self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]
        assert resp.status_code < 300, resp.text
        return resp.json() if resp.content else {}

    def wait(self, path: str, done: Callable[[dict], bool]) -> dict:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = self.call("GET", path)
            if done(body):
                return body
            time.sleep(0.02)
        raise TimeoutError(path)


def run_checks(runner: CfRunner, params: dict) -> tuple[int, dict, str]:
    results = runner.tmp / "results.json"
    run = runner.run("verify_policies.ipynb", params, results_json=str(results))
    return run.returncode, json.loads(results.read_text()), run.notebook.read_text()


def drift_public_route(cc: Cc, cf: FakeCloudFoundry) -> None:
    space = cf.app("docker-registry-mirror")["space_guid"]
    manifest = ("applications:\n- name: docker-registry-mirror\n  routes:\n"
                "  - route: docker-registry-mirror-staging.apps.internal\n  - route: mirror-oops.app.cloud.gov\n")
    resp = cc.session.post(f"{cc.url}/v3/spaces/{space}/actions/apply_manifest", data=manifest,
                           headers={"Content-Type": "application/x-yaml"}, timeout=10)
    assert resp.status_code == 202
    cc.wait("/v3/jobs/" + resp.headers["Location"].rsplit("/", 1)[-1], lambda j: j["state"] == "COMPLETE")


def drift_extra_policy(cc: Cc, cf: FakeCloudFoundry) -> None:
    # Any source but the proxy will do: the mirror itself is an app the stand-in already has.
    mirror = cf.app("docker-registry-mirror")
    cc.call("POST", "/networking/v1/external/policies", json={"policies": [{
        "source": {"id": mirror["guid"]},
        "destination": {"id": mirror["guid"], "protocol": "tcp", "ports": {"start": 8080, "end": 8080}}}]})


def drift_unpinned_image(cc: Cc, cf: FakeCloudFoundry) -> None:
    app = cf.app("docker-registry-mirror")["guid"]
    package = cc.call("POST", "/v3/packages", json={"type": "docker", "data": {"image": "registry:latest"},
                                                     "relationships": {"app": {"data": {"guid": app}}}})
    build = cc.call("POST", "/v3/builds", json={"package": {"guid": package["guid"]}})
    staged = cc.wait(f"/v3/builds/{build['guid']}", lambda b: b["state"] == "STAGED")
    deployment = cc.call("POST", "/v3/deployments", json={"droplet": {"guid": staged["droplet"]["guid"]},
                                                          "relationships": {"app": {"data": {"guid": app}}}})
    cc.wait(f"/v3/deployments/{deployment['guid']}", lambda d: d["status"]["value"] == "FINALIZED")


def drift_redirect_enabled(cc: Cc, cf: FakeCloudFoundry) -> None:
    app = cf.app("docker-registry-mirror")["guid"]
    cc.call("PATCH", f"/v3/apps/{app}/environment_variables", json={"var": {"REGISTRY_STORAGE_REDIRECT_DISABLE": "false"}})


DRIFTS = {
    "public-route-on-mirror": (drift_public_route, {"mirror-not-exposed"}),
    "another-policy-to-mirror": (drift_extra_policy, {"network-policy"}),
    "unpinned-image": (drift_unpinned_image, {"image-pinned"}),
    "redirect-enabled": (drift_redirect_enabled, {"no-s3-redirect", "config-matches"}),
}


def test_api_checks_pass_after_a_good_deploy(runner: CfRunner, cf: FakeCloudFoundry) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params).returncode == 0
    code, results, notebook = run_checks(runner, params)
    assert code == 0, results
    statuses = {c["id"]: c["status"] for c in results["checks"]}
    assert {k for k, v in statuses.items() if v == "pass"} == API_CHECKS
    assert {v for k, v in statuses.items() if k not in API_CHECKS} == {"n/a"}
    for cidr in RULES["allow"] + RULES["deny"] + RULES["trusted_routers"]:
        assert cidr not in notebook, "a private range reached the executed notebook"


@pytest.mark.parametrize("name", list(DRIFTS))
def test_each_drift_fails_the_check_that_proves_it(runner: CfRunner, cf: FakeCloudFoundry, name: str) -> None:
    params = runner.params("staging")
    assert runner.run("deploy.ipynb", params).returncode == 0
    drift, expected = DRIFTS[name]
    drift(Cc(cf), cf)
    code, results, _ = run_checks(runner, params)
    assert code != 0
    assert set(results["failed"]) == expected
