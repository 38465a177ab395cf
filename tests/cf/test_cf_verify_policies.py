"""verify_policies on Cloud Foundry (the stand-ins): after a good deploy every check a worker on the
allow-list can make passes, through the public route (the CF edge stand-ins in front of the
nginx.conf the deploy uploaded) and through the API; each drift fails the check that proves it.
The checks run in-process; one papermill run of verify_policies.ipynb proves the notebook."""
from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Callable

import pytest

from registry_mirror.checks import PolicyReport
from tests.cf.conftest import (
    CHECK_IMAGE, ROOT, RULES, CfRunner, FakeClock, Foundation, assert_no_secret, cc_session, public_route,
)
from tests.cf.runbooks import deploy_runbook, verify_runbook
from tests.fakes.cf_api import FakeCloudFoundry

# Before this suite grew client checks, six of fourteen were n/a on CF; now three of seventeen are.
NOT_APPLICABLE = {"denied-listed", "denied-by-default", "cache-not-exposed"}
# Not Docker Hub upstream: the allowance check has nothing to read.
NO_DOCKER_HUB = {"ratelimit-headers"}


class Cc:
    """A logged-in CC client for drifting the deployment behind the runbooks' back."""

    def __init__(self, cf: FakeCloudFoundry, clock: FakeClock | None = None) -> None:
        self.url = cf.url
        self.session = cc_session(cf)
        self.clock = clock  # the stand-in's fake time, when it has one: waiting moves it

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
            if self.clock is not None:
                self.clock.sleep(0.25)
            else:
                time.sleep(0.02)
        raise TimeoutError(path)


def run_checks(foundation: Foundation, params: dict, mirror_app: str) -> tuple[PolicyReport, str]:
    """The checks as the notebook runs them; the report and all it shows (table, verdict, JSON)."""
    results = foundation.tmp / "results.json"
    with public_route(foundation.cf, mirror_app) as edge:
        report = verify_runbook(foundation.platform(params), public_url=edge.public_url, image=CHECK_IMAGE,
                                results=results)
    return report, "\n".join([repr(report), report._repr_html_(), report.verdict(), results.read_text()])


def private_ranges() -> list[str]:
    """The test's rules that are not also the local platform's defaults in the notebook's parameters cell."""
    defaults = (ROOT / "notebooks/verify_policies.ipynb").read_text()
    private = [c for c in RULES["allow"] + RULES["deny"] + RULES["trusted_routers"] if c not in defaults]
    assert len(private) >= 4
    return private


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


def build_and_deploy(cc: Cc, app: str, package: str) -> None:
    """What `cf push` does after the upload, behind the runbooks' back: build, then a rolling deployment."""
    build = cc.call("POST", "/v3/builds", json={"package": {"guid": package}})
    staged = cc.wait(f"/v3/builds/{build['guid']}", lambda b: b["state"] == "STAGED")
    deployment = cc.call("POST", "/v3/deployments", json={"droplet": {"guid": staged["droplet"]["guid"]},
                                                          "relationships": {"app": {"data": {"guid": app}}}})
    cc.wait(f"/v3/deployments/{deployment['guid']}", lambda d: d["status"]["value"] == "FINALIZED")


def drift_unpinned_image(cc: Cc, cf: FakeCloudFoundry) -> None:
    app = cf.app("docker-registry-mirror")["guid"]
    package = cc.call("POST", "/v3/packages", json={"type": "docker", "data": {"image": "registry:latest"},
                                                     "relationships": {"app": {"data": {"guid": app}}}})
    build_and_deploy(cc, app, package["guid"])


def drift_other_digest(cc: Cc, cf: FakeCloudFoundry) -> None:
    """Pinned, but not to the digest the params pin (CC reports it normalised, library/registry@...)."""
    app = cf.app("docker-registry-mirror")["guid"]
    package = cc.call("POST", "/v3/packages", json={"type": "docker", "data": {"image": "registry@sha256:" + "0" * 64},
                                                     "relationships": {"app": {"data": {"guid": app}}}})
    build_and_deploy(cc, app, package["guid"])


def drift_redirect_enabled(cc: Cc, cf: FakeCloudFoundry) -> None:
    app = cf.app("docker-registry-mirror")["guid"]
    cc.call("PATCH", f"/v3/apps/{app}/environment_variables", json={"var": {"REGISTRY_STORAGE_REDIRECT_DISABLE": "false"}})


def deploy_proxy_conf(cc: Cc, cf: FakeCloudFoundry, edit: Callable[[str], str]) -> None:
    """Someone pushes the proxy by hand with an edited nginx.conf: a new bits package, built, deployed."""
    app = cf.app("docker-registry-proxy")["guid"]
    droplet = cc.call("GET", f"/v3/apps/{app}/droplets/current")
    current = cc.session.get(droplet["links"]["package"]["href"] + "/download", timeout=10)
    assert current.status_code == 200
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(current.content)) as old, zipfile.ZipFile(out, "w") as new:
        for entry in old.infolist():  # the entry keeps its mode: blob-fanout stays executable
            name, data = entry.filename, old.read(entry)
            if name == "nginx.conf":
                edited = edit(data.decode())
                assert edited != data.decode(), "the edit changed nothing"
                data = edited.encode()
            new.writestr(entry, data)
    package = cc.call("POST", "/v3/packages", json={"type": "bits", "relationships": {"app": {"data": {"guid": app}}}})
    cc.call("POST", f"/v3/packages/{package['guid']}/upload", files={"bits": ("app.zip", out.getvalue())})
    cc.wait(f"/v3/packages/{package['guid']}", lambda p: p["state"] == "READY")
    build_and_deploy(cc, app, package["guid"])


def drift_catalog_opened(cc: Cc, cf: FakeCloudFoundry) -> None:
    deploy_proxy_conf(cc, cf, lambda conf: re.sub(r"location = /v2/_catalog \{.*?\n        \}\n", "", conf,
                                                  flags=re.S))


def drift_writes_forwarded(cc: Cc, cf: FakeCloudFoundry) -> None:
    deploy_proxy_conf(cc, cf, lambda conf: conf.replace("        HEAD 0;\n", "        HEAD 0;\n        POST 0;\n"))


def drift_trust_everyone(cc: Cc, cf: FakeCloudFoundry) -> None:
    # The "fix" the README warns about: believe X-Forwarded-For from anywhere.
    deploy_proxy_conf(cc, cf, lambda conf: conf.replace('set_real_ip_from {{env "CF_INSTANCE_INTERNAL_IP"}};',
                                                        "set_real_ip_from 0.0.0.0/0;"))


DRIFTS = {
    "catalog-opened-by-hand": (drift_catalog_opened, {"catalog-refused", "config-matches"}),
    "writes-forwarded-by-hand": (drift_writes_forwarded, {"push-refused-proxy", "config-matches"}),
    "proxy-trusts-everyone": (drift_trust_everyone, {"forged-xff", "config-matches"}),
    "public-route-on-mirror": (drift_public_route, {"mirror-not-exposed"}),
    "another-policy-to-mirror": (drift_extra_policy, {"network-policy"}),
    "unpinned-image": (drift_unpinned_image, {"image-pinned"}),
    "other-digest": (drift_other_digest, {"image-pinned"}),
    "redirect-enabled": (drift_redirect_enabled, {"no-s3-redirect", "config-matches"}),
}


def test_every_check_a_worker_can_make_passes_after_a_good_deploy(foundation: Foundation, cf: FakeCloudFoundry,
                                                                  mirror_app: str) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params))
    report, shown = run_checks(foundation, params, mirror_app)
    assert report.ok, report
    statuses = {c.id: c.status for c in report.checks}
    assert {k for k, v in statuses.items() if v == "n/a"} == NOT_APPLICABLE | NO_DOCKER_HUB
    assert {k for k, v in statuses.items() if v != "n/a"} == {k for k, v in statuses.items() if v == "pass"}
    assert len(statuses) == 17
    for cidr in private_ranges():
        assert cidr not in shown, "a private range reached what the notebook shows"
    assert_no_secret(shown)


@pytest.mark.parametrize("name", list(DRIFTS))
def test_each_drift_fails_the_check_that_proves_it(foundation: Foundation, cf: FakeCloudFoundry, mirror_app: str,
                                                   name: str) -> None:
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params))
    drift, expected = DRIFTS[name]
    drift(Cc(cf, foundation.clock), cf)
    report, _ = run_checks(foundation, params, mirror_app)
    assert not report.ok
    assert set(report.failed) == expected


@pytest.mark.notebooks
def test_the_notebook_fails_non_zero_on_a_drift_and_shows_no_private_range(
        foundation: Foundation, runner: CfRunner, cf: FakeCloudFoundry, mirror_app: str) -> None:
    """The one papermill run of verify_policies.ipynb on CF: every check runs and is shown, the failed one
    makes the run exit non-zero, and neither a private range nor a secret reaches the notebook."""
    params = foundation.params("staging")
    deploy_runbook(foundation.platform(params))
    drift, expected = DRIFTS["redirect-enabled"]
    drift(Cc(cf, foundation.clock), cf)
    results = runner.tmp / "results.json"
    with public_route(cf, mirror_app) as edge:
        run = runner.run("verify_policies.ipynb", params, results_json=str(results), public_url=edge.public_url,
                         check_image=CHECK_IMAGE)
    assert run.returncode != 0
    assert set(json.loads(results.read_text())["failed"]) == expected
    notebook = run.notebook.read_text()
    for cidr in private_ranges():
        assert cidr not in notebook, "a private range reached the executed notebook"
    run.assert_no_secret()
