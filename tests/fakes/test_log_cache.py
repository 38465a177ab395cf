"""Log Cache's read API in the CF stand-in, read by the retention ledger's reader through the CF session.

What the real one does (log-cache-release: src/internal/auth/cf_auth_middleware.go and
src/internal/routing/local_store_reader.go): 404 with no body for a missing token or a source the
user may not read, an error for a limit above 1000, envelopes oldest first from start_time.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from registry_mirror.credentials import Secret
from registry_mirror.platforms.cloudfoundry.session import CfApiError, CfCredentials, CfSession
from registry_mirror.retention.ledger import pulls_from_logs
from registry_mirror.retention.log_cache import read_app_logs, write_lines
from tests.fakes.cf_api import FakeCloudFoundry
from tests.fakes.test_cf_stand_in import Api, ManualClock, password_token

LINE = ('NginxLog "-" "GET /v2/library/{repo}/manifests/1 HTTP/1.1" 200 512 client=10.10.0.5 rt=0.010 '
        'urt=0.010 ua="10.255.0.9:5000" cache=MISS t=2026-12-0{day}T10:00:00+00:00')


def test_the_ledger_reads_the_proxys_lines_from_log_cache_page_by_page(tmp_path: Path) -> None:
    with FakeCloudFoundry(users={"deployer": "deployer-password"}, clock=ManualClock()) as cf:
        Api(cf, None).apply_manifest({"applications": [{"name": "proxy"}]})
        guid = cf.app("proxy")["guid"]
        for i in range(2300):
            cf.emit_app_log("proxy", LINE.format(repo=f"img{i % 7}", day=1 + i % 5), at_ns=1_000 + i)
        cf.emit_app_log("proxy", "2026-12-05T10:00:00.00+0000 [RTR/0] OUT proxy.app.cloud.gov - [...]", at_ns=9_000)
        session = CfSession(cf.url, CfCredentials("password", "deployer", Secret("CF_PASSWORD", "deployer-password")))
        cf.clear_requests()
        lines = list(read_app_logs(lambda path, query: session.get_linked("log_cache", path, query), guid))
        assert len(lines) == 2301 and lines[0].timestamp == 1_000 and lines[-1].timestamp == 9_000
        reads = [r for r in cf.requests if r.path.startswith("/api/v1/read/")]
        assert [r.query["limit"] for r in reads] == [["1000"]] * 3
        assert [r.query["start_time"] for r in reads] == [["0"], ["2000"], ["3000"]]

        count, last = write_lines(iter(lines), str(tmp_path / "proxy.log"))
        pulls = pulls_from_logs([tmp_path / "proxy.log"]).set_index("repository")
        assert count == 2301 and last == 9_000 and len(pulls) == 7
        assert str(pulls.loc["library/img0", "last_pull"]).startswith("2026-12-05")

        # An unknown source, or no token: the auth proxy's bare 404.
        with pytest.raises(CfApiError, match="answered 404"):
            session.get_linked("log_cache", "/api/v1/read/not-an-app", {"limit": "10"})
        assert requests.get(f"{cf.url}/api/v1/read/{guid}", timeout=10).status_code == 404
        token = password_token(cf)["access_token"]
        too_many = requests.get(f"{cf.url}/api/v1/read/{guid}", params={"limit": "1001"}, timeout=10,
                                headers={"Authorization": f"bearer {token}"})
        assert too_many.status_code == 500 and "must be 1000 or less" in too_many.json()["message"]
        window = requests.get(f"{cf.url}/api/v1/read/{guid}", timeout=10, headers={"Authorization": f"bearer {token}"},
                              params={"start_time": "1000", "end_time": "1003", "envelope_types": "LOG"}).json()
        assert [e["timestamp"] for e in window["envelopes"]["batch"]] == ["1000", "1001", "1002"]


def test_the_cf_platform_hands_the_ledger_both_apps_lines(tmp_path: Path) -> None:
    """Platform.access_logs on Cloud Foundry: the proxy's and the mirror's Log Cache lines, as files."""
    import yaml

    from registry_mirror.parameters import PROJECT_ROOT, validate_settings
    from registry_mirror.platforms.cloudfoundry import CloudFoundryPlatform

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"allow": ["10.10.0.0/16"], "deny": [], "trusted_routers": ["10.0.0.0/24"]}))
    data = yaml.safe_load((PROJECT_ROOT / "params" / "staging.yaml").read_text())
    with FakeCloudFoundry(users={"deployer": "deployer-password"}, clock=ManualClock()) as cf:
        data["cloudfoundry"]["api"] = cf.url
        data["proxy"]["security_rules_file"] = str(rules)
        settings = validate_settings(data, source="test")
        api = Api(cf, None)
        for app in (settings.cloudfoundry.proxy_app, settings.cloudfoundry.mirror_app):  # type: ignore[union-attr]
            api.apply_manifest({"applications": [{"name": app}]}, space=settings.cloudfoundry.space)  # type: ignore[union-attr]
        cf.emit_app_log(settings.cloudfoundry.proxy_app, LINE.format(repo="img0", day=3))  # type: ignore[union-attr]
        cf.emit_app_log(settings.cloudfoundry.mirror_app, '{"msg":"response completed"}', stream="ERR")  # type: ignore[union-attr]
        session = CfSession(cf.url, CfCredentials("password", "deployer", Secret("CF_PASSWORD", "deployer-password")))
        platform = CloudFoundryPlatform(settings, settings.load_security_rules(), session=session)
        proxy, mirror = platform.access_logs(str(tmp_path / "logs"))
        assert Path(proxy[0]).read_text().startswith('NginxLog "-" "GET /v2/library/img0/')
        assert Path(mirror[0]).read_text() == '{"msg":"response completed"}\n'
        assert "deployer-password" not in Path(proxy[0]).read_text()
