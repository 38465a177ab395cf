"""The resource module and the session's waits, against the CF API stand-in: where CC's "not there"
becomes None (and nowhere else), and how a wait ends."""
from __future__ import annotations

import pytest

from registry_mirror.errors import DeployError
from registry_mirror.platforms.cloudfoundry.resources import CloudController
from registry_mirror.platforms.cloudfoundry.session import CfApiError, PollTimeout
from tests.cf.conftest import FakeClock, session_on
from tests.fakes.cf_api import FakeCloudFoundry

MANIFEST = "applications:\n- name: mirror\n  instances: 1\n  docker: {image: registry:2}\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cc(cf: FakeCloudFoundry, clock: FakeClock) -> CloudController:
    cf.clock = clock.clock  # the stand-in's time is the session's: staging takes its seconds there
    session = session_on(cf, clock)
    session.poll_interval = 0.5
    return CloudController(session)


def space_guid(cc: CloudController) -> str:
    space = cc.space("cloud-gov", "registry-mirror")
    assert space is not None
    return space["guid"]


def test_an_app_without_a_droplet_has_none_where_cc_answers_404(cc: CloudController, cf: FakeCloudFoundry) -> None:
    cc.apply_manifest(space_guid(cc), MANIFEST)
    app = cc.app(space_guid(cc), "mirror")
    assert app is not None
    assert cc.current_droplet(app) is None
    assert cc.current_package_bits(app) is None
    assert [r.status for r in cf.requests if r.path.endswith("/droplets/current")] == [404, 404]


def test_an_app_a_dry_run_only_plans_has_no_droplet_and_costs_no_call(cc: CloudController,
                                                                       cf: FakeCloudFoundry) -> None:
    cc.session.login()
    cf.clear_requests()
    assert cc.current_droplet({"guid": "<new app>", "name": "mirror"}) is None
    assert cf.requests == []


def test_other_failures_are_errors_not_none(cc: CloudController, cf: FakeCloudFoundry) -> None:
    cc.apply_manifest(space_guid(cc), MANIFEST)
    app = cc.app(space_guid(cc), "mirror")
    assert app is not None
    cf.faults.transient_502 = cc.session.retries + 1  # the router fails every try
    with pytest.raises(CfApiError) as failed:
        cc.current_droplet(app)
    assert failed.value.status == 502


def test_what_does_not_exist_is_none(cc: CloudController) -> None:
    assert cc.organization("no-such-org") is None
    assert cc.space("no-such-org", "registry-mirror") is None
    assert cc.space("cloud-gov", "no-such-space") is None
    assert cc.app(space_guid(cc), "no-such-app") is None
    assert cc.service_instance(space_guid(cc), "no-such-service") is None
    assert cc.service_plan("s3", "gold") is None
    assert cc.service_plan("s3", "basic") is not None
    assert cc.internal_domain() is not None


def test_a_docker_app_has_a_droplet_but_no_package_bits(cc: CloudController, cf: FakeCloudFoundry) -> None:
    cc.apply_manifest(space_guid(cc), MANIFEST)
    app = cc.app(space_guid(cc), "mirror")
    assert app is not None
    package = cc.create_docker_package(app, "registry:2")
    assert package is not None
    build = cc.create_build(package)
    assert build is not None
    built = cc.session.poll(lambda: cc.build(build["guid"]), lambda b: b["state"] == "STAGED", timeout=10,
                            what="build")
    deployment = cc.create_deployment(app, droplet_guid=built["droplet"]["guid"], max_in_flight=1)
    assert deployment is not None and deployment["status"]["value"] == "FINALIZED"  # a stopped app: at once
    droplet = cc.current_droplet(app)
    assert droplet is not None and droplet["guid"] == built["droplet"]["guid"]
    assert cc.current_package_bits(app) is None
    assert [s["state"] for s in cc.process_stats(cc.web_process(app))] == ["STARTING"]  # its health check pending
    running = cc.session.poll(lambda: cc.process_stats(cc.web_process(app)),
                              lambda stats: [s["state"] for s in stats] == ["RUNNING"], timeout=10, what="start")
    assert running[0]["uptime"] == 0
    assert cc.active_deployments(app) == [] and len(cc.deployments(app)) == 1
    assert cc.crash_events(app, limit=10) == []


def test_a_failed_job_is_an_error_with_ccs_words(cc: CloudController) -> None:
    manifest = "applications:\n- name: mirror\n  routes:\n  - route: mirror.no-such-domain.example\n"
    with pytest.raises(DeployError, match="failed: .*no-such-domain"):
        cc.apply_manifest(space_guid(cc), manifest)


def test_a_wait_ends_at_its_deadline_on_the_sessions_clock(cc: CloudController, clock: FakeClock) -> None:
    reads = iter(range(100))
    with pytest.raises(PollTimeout, match="the thing not finished after 2 s") as late:
        cc.session.poll(lambda: next(reads), lambda n: False, timeout=2, what="the thing")
    assert late.value.last == 4  # reads at 0, 0.5, 1, 1.5 and 2 s; then the deadline
    assert clock.sleeps == [0.5] * 4


def test_a_long_wait_says_how_it_stands_at_least_every_30_seconds(cc: CloudController, clock: FakeClock) -> None:
    """Headless, papermill shows no cell output: a build of minutes must not look like a hang."""
    said: list[str] = []
    cc.session.notify = said.append
    reads = iter(range(1000))
    with pytest.raises(PollTimeout):
        cc.session.poll(lambda: next(reads), lambda n: False, timeout=100, what="the build")
    assert len(said) == 3 and said[0] == "still waiting for the build: 30 s of at most 100 s"


def test_a_dry_run_sends_no_change(cc: CloudController, cf: FakeCloudFoundry) -> None:
    guid = space_guid(cc)
    cc.session.dry_run = True
    cf.clear_requests()
    assert cc.apply_manifest(guid, MANIFEST) is None
    assert [r for r in cf.requests if r.mutating] == []
    assert [(c.method, c.status) for c in cc.session.calls if not c.sent] == [("POST", "planned")]
