"""The typed parameters model: every params file validates, and every kind of bad file is refused
with one clear line that names the file and the key, before anything is started."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import registry_mirror.platforms as platforms
from registry_mirror.platforms import registry as platform_registry
from registry_mirror.errors import ParameterError
from registry_mirror.parameters import (
    PROJECT_ROOT,
    SETTINGS_KEYS,
    Settings,
    load_params_file,
    runbook_parameters,
    validate_settings,
)
from registry_mirror.processes import children_of
from registry_mirror.security_rules import SecurityRules

PARAMS = PROJECT_ROOT / "params"
SECRET = "s3cr3t-value"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((PARAMS / f"{name}.yaml").read_text())


def _text(name: str) -> str:
    return (PARAMS / f"{name}.yaml").read_text()


def _write(tmp_path: Path, data: Any, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _assert_one_line(message: str) -> None:
    assert message.splitlines() == [message], f"not one line: {message!r}"


# ---------------------------------------------------------------------------------------------
# The real params files


@pytest.mark.parametrize(("name", "environment", "platform", "on_failure"), [
    pytest.param("local", "local", "local", "stop", id="local"),
    pytest.param("staging", "staging", "cloudfoundry", "stop", id="staging"),
    pytest.param("production", "production", "cloudfoundry", "cancel", id="production"),
])
def test_params_file_validates(name: str, environment: str, platform: str, on_failure: str) -> None:
    settings = load_params_file(PARAMS / f"{name}.yaml")
    assert isinstance(settings, Settings)
    assert (settings.environment, settings.platform, settings.on_failure) == (environment, platform, on_failure)
    # The sections match the platform.
    if platform == "local":
        assert settings.local is not None and settings.storage is not None and settings.cloudfoundry is None
        # The local platform runs what production pins, not a version of its own.
        assert settings.registry.version == load_params_file(PARAMS / "production.yaml").registry.version
        assert settings.proxy.security_rules is not None
    else:
        assert settings.cloudfoundry is not None and settings.local is None and settings.storage is None
        assert settings.registry.major >= 3
        assert settings.registry.image is not None and "@sha256:" in settings.registry.image
        assert settings.upstream.password is None and settings.upstream.password_env
        assert settings.proxy.security_rules is None and settings.proxy.security_rules_file
        assert settings.cloudfoundry.mirror_route.endswith(".apps.internal")


def test_relative_params_path_is_relative_to_the_project_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a kernel started elsewhere still finds params/
    assert load_params_file("params/local.yaml").environment == "local"


def test_staging_and_production_run_the_same_pinned_image() -> None:
    """What staging tested is what production gets."""
    staging, production = load_params_file(PARAMS / "staging.yaml"), load_params_file(PARAMS / "production.yaml")
    assert staging.registry.image == production.registry.image
    assert staging.registry.version == production.registry.version


def test_upstream_password_is_hidden_in_repr_and_str() -> None:
    settings = load_params_file(PARAMS / "local.yaml")
    password = settings.upstream.password
    assert password
    for text in (repr(settings), str(settings), repr(settings.upstream), str(settings.upstream),
                 f"{settings.upstream}"):
        assert password not in text


# ---------------------------------------------------------------------------------------------
# Invalid params files: a table


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value
    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        del data[last]
    return mutate


def _all(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)
    return mutate


def _rules(field: str, index: int | None, value: str) -> Callable[[dict[str, Any]], None]:
    """Set (index) or append (None) one range of params/local.yaml's inline security rules."""
    def mutate(data: dict[str, Any]) -> None:
        ranges = data["proxy"]["security_rules"][field]
        if index is None:
            ranges.append(value)
        else:
            ranges[index] = value
    return mutate


@dataclass(frozen=True)
class Bad:
    base: str  # "local" or "staging"
    key: str | None  # the key path the message must name (None: the problem is the file itself)
    phrase: str
    mutate: Callable[[dict[str, Any]], None] | None = None  # on the loaded YAML
    text: Callable[[str], str] | None = None  # on the raw text, for what YAML cannot express
    missing_file: bool = False


def _replace_once(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} must occur once in the base file"
        return text.replace(old, new)
    return edit


BAD_FILES = [
    # keys
    pytest.param(Bad("local", "mirror_count", "unknown key", _set("mirror_count", 3)), id="unknown-top-level-key"),
    pytest.param(Bad("local", "registry.replicas", "unknown key", _set("registry.replicas", 2)),
                 id="unknown-nested-key"),
    pytest.param(Bad("local", "proxy", "missing key", _delete("proxy")), id="missing-top-level-key"),
    pytest.param(Bad("staging", "proxy.blob_cache_size", "half of proxy.disk_quota",
                     _set("proxy.blob_cache_size", "1G")), id="cf-caches-leave-no-room-for-layers-in-flight"),
    pytest.param(Bad("staging", "proxy.disk_quota", "a size such as", _set("proxy.disk_quota", "lots")),
                 id="disk-quota-not-a-size"),
    pytest.param(Bad("staging", "cloudfoundry.mirror_route", "missing key", _delete("cloudfoundry.mirror_route")),
                 id="missing-nested-key"),
    # types (strict: nothing is coerced)
    pytest.param(Bad("local", "local.public_port", "valid integer", _set("local.public_port", "8080")),
                 id="wrong-type-port-string"),
    pytest.param(Bad("staging", "registry.instances", "valid integer", _set("registry.instances", True)),
                 id="wrong-type-bool-for-int"),
    pytest.param(Bad("local", "registry.instances", "valid integer",
                     text=_replace_once("  instances: 2\n", '  instances: "2"\n')), id="raw-instances-quoted-string"),
    pytest.param(Bad("local", "registry.version", "valid string",
                     text=_replace_once('version: "3.1.2"', "version: 3.1")), id="raw-version-unquoted-float"),
    # CIDRs
    pytest.param(Bad("local", "proxy.security_rules.allow[1]", "is not a CIDR", _rules("allow", 1, "10.0.0.0/33")),
                 id="cidr-prefix-33"),
    pytest.param(Bad("local", "proxy.security_rules.deny[0]", "is not a CIDR", _rules("deny", 0, "not-a-cidr")),
                 id="cidr-garbage"),
    pytest.param(Bad("local", "proxy.security_rules.allow[1]", "has host bits set",
                     _rules("allow", 1, "10.0.0.1/8")), id="cidr-host-bits-set"),
    pytest.param(Bad("local", "proxy.security_rules.deny[1]", "both allowed and denied",
                     _rules("deny", None, "127.0.0.10/32")), id="cidr-allowed-and-denied"),
    pytest.param(Bad("local", "proxy.security_rules.trusted_routers[0]", "is broader than /16 (IPv4)",
                     _set("proxy.security_rules.trusted_routers", ["0.0.0.0/0"])), id="trusted-router-too-broad"),
    pytest.param(Bad("local", "proxy.security_rules.trusted_routers[0]", "is broader than /48 (IPv6)",
                     _set("proxy.security_rules.trusted_routers", ["::/9"])), id="trusted-router-v6-too-broad"),
    pytest.param(Bad("local", "proxy.security_rules.allow[0]", "mirror_is_public",
                     _set("proxy.security_rules.allow", ["0.0.0.0/0"])), id="allow-everyone-v4"),
    pytest.param(Bad("local", "proxy.security_rules.allow[0]", "mirror_is_public",
                     _set("proxy.security_rules.allow", ["::/0"])), id="allow-everyone-v6"),
    pytest.param(Bad("local", "proxy.security_rules.allow[0]", "IPv6 scope",
                     _set("proxy.security_rules.allow", ["fe80::%eth0/64"])), id="allow-scoped-v6"),
    pytest.param(Bad("local", "proxy.security_rules.trusted_routers[0]", "overlaps a deny range",
                     _set("proxy.security_rules.trusted_routers", ["127.0.0.64/30"])), id="trusted-overlaps-deny"),
    pytest.param(Bad("local", "proxy.security_rules.allow", "at least 1 item",
                     _set("proxy.security_rules.allow", [])), id="no-allowed-range"),
    # URLs
    pytest.param(Bad("local", "upstream.url", "is not a http or https URL", _set("upstream.url", "ftp://x")),
                 id="url-ftp"),
    pytest.param(Bad("staging", "upstream.url", "root URL with no path",
                     _set("upstream.url", "https://registry-1.docker.io/v2/")), id="url-with-path"),
    pytest.param(Bad("staging", "upstream.url", "must not carry credentials",
                     _set("upstream.url", "https://mirror:pw@registry-1.docker.io")), id="url-with-credentials"),
    pytest.param(Bad("staging", "cloudfoundry.api", "is not a https URL",
                     _set("cloudfoundry.api", "http://api.fr.cloud.gov")), id="cf-api-not-https"),
    # sizes and counts
    pytest.param(Bad("local", "registry.memory", "memory size", _set("registry.memory", "256")), id="memory-no-unit"),
    pytest.param(Bad("staging", "proxy.memory", "memory size", _set("proxy.memory", "0M")), id="memory-zero"),
    pytest.param(Bad("local", "registry.instances", "greater than or equal to 1", _set("registry.instances", 0)),
                 id="instances-0"),
    pytest.param(Bad("staging", "proxy.instances", "less than or equal to 64", _set("proxy.instances", 1000)),
                 id="instances-1000"),
    # local platform
    pytest.param(Bad("local", "local.address", "loopback", _set("local.address", "10.1.2.3")),
                 id="local-address-not-loopback"),
    pytest.param(Bad("local", "local.address", "IPv4 loopback", _set("local.address", "::1")),
                 id="local-address-ipv6"),
    pytest.param(Bad("local", "local.hub_port", "must differ", _set("local.hub_port", 8080)),
                 id="duplicate-ports"),
    # platform and environment rules
    pytest.param(Bad("local", "cloudfoundry", "must be null for platform local",
                     _set("cloudfoundry", _load("staging")["cloudfoundry"])), id="local-with-cf-section"),
    pytest.param(Bad("staging", "local", "is required for platform local", _set("platform", "local")),
                 id="platform-section-mismatch"),
    pytest.param(Bad("staging", "environment", "platform local", _set("environment", "local")),
                 id="environment-local-on-cf"),
    pytest.param(Bad("staging", "upstream.password", "only be written in params for the local environment",
                     _all(_set("upstream.password", SECRET), _set("upstream.password_env", None))),
                 id="staging-inline-password"),
    pytest.param(Bad("staging", "upstream.password", "not both", _set("upstream.password", SECRET)),
                 id="password-and-password-env"),
    pytest.param(Bad("local", "upstream.username", "required with a password", _set("upstream.username", None)),
                 id="password-without-username"),
    pytest.param(Bad("staging", "proxy.security_rules", "private outside local",
                     _all(_set("proxy.security_rules", _load("local")["proxy"]["security_rules"]),
                          _set("proxy.security_rules_file", None))), id="staging-inline-security-rules"),
    pytest.param(Bad("local", "proxy", "exactly one of security_rules and security_rules_file",
                     _set("proxy.security_rules_file", "rules.yaml")), id="both-rules-sources"),
    pytest.param(Bad("staging", "on_failure", "must be cancel in production", _set("environment", "production")),
                 id="production-on-failure-stop"),
    pytest.param(Bad("staging", "registry.image", "pinned by digest", _set("registry.image", "registry:3.0.0")),
                 id="cf-image-tag-only"),
    # containers/image (Diego's stager, the cells, skopeo) refuses a tag with a digest: the first staging would fail.
    pytest.param(Bad("staging", "registry.image", "no tag: Cloud Foundry refuses a tag with a digest",
                     _set("registry.image", "registry:3.0.0@sha256:" + "a" * 64)), id="cf-image-tag-and-digest"),
    pytest.param(Bad("staging", "registry.image", "pinned by digest", _set("registry.image", None)),
                 id="cf-image-missing"),
    pytest.param(Bad("staging", "cloudfoundry.mirror_route", "route on apps.internal",
                     _set("cloudfoundry.mirror_route", "docker-registry-mirror.app.cloud.gov")),
                 id="mirror-route-public"),
    pytest.param(Bad("staging", "cloudfoundry.proxy_route", "not on apps.internal",
                     _set("cloudfoundry.proxy_route", "docker-registry.apps.internal")), id="proxy-route-internal"),
    # the file itself
    pytest.param(Bad("local", "duplicate key 'platform'", "is not valid YAML",
                     text=lambda t: t + "platform: cloudfoundry\n"), id="raw-duplicate-key"),
    pytest.param(Bad("local", "line 3", "is not valid YAML",
                     text=lambda t: "environment: local\nregistry: [unclosed\n"), id="raw-yaml-syntax-error"),
    pytest.param(Bad("local", None, "must be a mapping of keys to values, not a list",
                     text=lambda t: "- environment: local\n- platform: local\n"), id="raw-top-level-list"),
    pytest.param(Bad("local", None, "is empty; it must hold a mapping of keys to values", text=lambda t: ""),
                 id="raw-empty-file"),
    pytest.param(Bad("local", None, "file not found", missing_file=True), id="file-not-found"),
]


def _bad_file(tmp_path: Path, case: Bad) -> Path:
    path = tmp_path / "params-under-test.yaml"
    if case.missing_file:
        return path
    if case.text is not None:
        path.write_text(case.text(_text(case.base)))
        return path
    data = _load(case.base)
    assert case.mutate is not None
    case.mutate(data)
    return _write(tmp_path, data, path.name)


def test_the_table_is_large_enough() -> None:
    assert len(BAD_FILES) >= 18


@pytest.mark.parametrize("case", BAD_FILES)
def test_invalid_params_file_is_refused_with_one_clear_line(tmp_path: Path, case: Bad) -> None:
    path = _bad_file(tmp_path, case)
    with pytest.raises(ParameterError) as info:
        load_params_file(path)
    message = str(info.value)
    _assert_one_line(message)
    assert message.startswith(f"{path}: "), message
    if case.key is not None:
        assert f"'{case.key}'" in message or case.key in message, message
    assert case.phrase in message, message
    assert SECRET not in message


def test_only_the_broken_key_is_named(tmp_path: Path) -> None:
    """A wrong key path would send the operator to the wrong line."""
    data = _load("local")
    data["registry"]["memory"] = "256"
    message = str(_raises(_write(tmp_path, data)))
    assert "'registry.memory'" in message
    assert "proxy.memory" not in message and "instances" not in message


def test_several_problems_stay_on_one_line(tmp_path: Path) -> None:
    data = _load("local")
    data["registry"]["memory"] = "256"
    data["proxy"]["instances"] = 0
    data["bogus"] = 1
    message = str(_raises(_write(tmp_path, data)))
    _assert_one_line(message)
    for key in ("registry.memory", "proxy.instances", "bogus"):
        assert key in message
    assert "more problems" in message


def test_a_value_with_a_newline_does_not_break_the_line(tmp_path: Path) -> None:
    data = _load("local")
    data["registry"]["memory"] = "2\n56M"
    message = str(_raises(_write(tmp_path, data)))
    _assert_one_line(message)
    assert "'registry.memory'" in message


def _raises(path: Path) -> ParameterError:
    with pytest.raises(ParameterError) as info:
        load_params_file(path)
    return info.value


# ---------------------------------------------------------------------------------------------
# Secrets never reach an error message


@pytest.mark.parametrize(("base", "mutate"), [
    pytest.param("local", _all(_set("upstream.password", SECRET), _set("registry.instances", "x")),
                 id="secret-beside-an-unrelated-error"),
    pytest.param("local", _set("upstream.password", 987654321), id="password-given-as-int"),
    pytest.param("local", _set("upstream.password", [SECRET]), id="password-given-as-list"),
    pytest.param("local", _set("upstream.password", {"value": SECRET}), id="password-given-as-map"),
    pytest.param("staging", _all(_set("upstream.password", SECRET), _set("upstream.password_env", None)),
                 id="inline-password-outside-local"),
    pytest.param("staging", _set("upstream.password", SECRET), id="password-and-password-env"),
    pytest.param("staging", _set("upstream.password_env", f"dckr_pat_{SECRET}"), id="token-pasted-into-password-env"),
    pytest.param("staging", _set("upstream.url", f"https://mirror:{SECRET}@registry-1.docker.io"),
                 id="credentials-in-url"),
    pytest.param("staging", _set("upstream.url", f"ftp://mirror:{SECRET}@registry-1.docker.io"),
                 id="credentials-in-bad-scheme-url"),
    pytest.param("staging", _set("upstream.url", f"https://mirror:{SECRET}@registry-1.docker.io/v2"),
                 id="credentials-in-url-with-path"),
    pytest.param("staging", _set("upstream.url", f"mirror:{SECRET}@registry-1.docker.io"),
                 id="credentials-in-url-without-scheme"),
    pytest.param("local", _all(_set("upstream.password", 987654321), _set("upstream.password_env", f"x{SECRET}"),
                               _set("proxy.memory", "1")), id="several-problems"),
])
def test_secret_values_never_appear_in_the_message(tmp_path: Path, base: str, mutate) -> None:
    data = _load(base)
    mutate(data)
    message = str(_raises(_write(tmp_path, data)))
    _assert_one_line(message)
    assert "upstream" in message or "registry.instances" in message
    for secret in (SECRET, "987654321"):
        assert secret not in message, message


# ---------------------------------------------------------------------------------------------
# Nothing starts before the parameters are valid


def _our_daemons() -> dict[str, int]:
    """How many docker-registry/nginx/weed processes this test process has started (its children)."""
    counts = {}
    for name in ("docker-registry", "nginx", "weed"):
        out = subprocess.run(["pgrep", "-c", "-x", "-P", str(os.getpid()), name], capture_output=True, text=True,
                             check=False).stdout.strip()
        counts[name] = int(out or 0)
    return counts


@pytest.mark.parametrize("mutate", [
    pytest.param(_set("local.hub_port", 8080), id="duplicate-ports"),
    pytest.param(_rules("allow", 0, "10.0.0.1/8"), id="bad-cidr"),
    pytest.param(_set("upstream.url", "ftp://x"), id="bad-url"),
])
def test_a_bad_file_starts_nothing(tmp_path: Path, monkeypatch, mutate) -> None:
    constructed = []

    class RecordingPlatform:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            constructed.append(args)

    monkeypatch.setitem(platform_registry._FACTORIES, "local", RecordingPlatform)
    data = _load("local")
    state_dir = tmp_path / "state"
    data["local"]["state_dir"] = str(state_dir)
    mutate(data)
    path = _write(tmp_path, data)
    rules = load_params_file(PARAMS / "local.yaml").load_security_rules()
    before_children, before = children_of(os.getpid()), _our_daemons()

    with pytest.raises(ParameterError):
        platforms.platform_for(load_params_file(path), rules)

    assert constructed == []
    assert _our_daemons() == before
    assert children_of(os.getpid()) <= before_children
    assert not state_dir.exists()


def test_the_platform_seam_is_real(tmp_path: Path, monkeypatch) -> None:
    """Control for the test above: with a valid file the (recording) platform is constructed."""
    constructed = []
    monkeypatch.setitem(platform_registry._FACTORIES, "local", lambda *a: constructed.append(a) or "platform")
    settings = load_params_file(PARAMS / "local.yaml")
    assert platforms.platform_for(settings, settings.load_security_rules()) == "platform"
    assert len(constructed) == 1


# ---------------------------------------------------------------------------------------------
# runbook_parameters(): the notebook's globals() after papermill


def _namespace(**options: Any) -> dict[str, Any]:
    ns: dict[str, Any] = dict(_load("local"))
    ns.update(options)
    # What a kernel's globals() also holds, none of it a parameter.
    ns.update({"os": os, "yaml": yaml, "Path": Path, "helper": lambda: None, "len": len,
               "_private": "x", "_": None, "__name__": "__main__", "In": [""], "Out": {},
               "get_ipython": lambda: None, "exit": None, "quit": None, "open": open})
    return ns


OPTIONS = {"dry_run": bool, "component": str}


def test_runbook_parameters_accepts_the_local_file_and_options() -> None:
    settings, options = runbook_parameters(_namespace(dry_run=True, component="all"), notebook="deploy.ipynb",
                                           options=OPTIONS)
    assert settings == load_params_file(PARAMS / "local.yaml")
    assert options == {"dry_run": True, "component": "all"}


def test_runbook_parameters_ignores_modules_functions_classes_and_private_names() -> None:
    ns = _namespace(dry_run=False, component="all")
    ns["types"] = types
    ns["_settings_cache"] = {"anything": 1}
    settings, _ = runbook_parameters(ns, notebook="deploy.ipynb", options=OPTIONS)
    assert settings.environment == "local"


@pytest.mark.parametrize(("change", "phrase"), [
    pytest.param({"registyr": {"instances": 2}}, "unknown parameter 'registyr' (did you mean 'registry'?)",
                 id="unknown-name"),
    pytest.param({"proxy": None}, "missing parameter 'proxy'", id="missing-setting"),
    pytest.param({"dry_run": None}, "missing parameter 'dry_run'", id="missing-option"),
    pytest.param({"dry_run": 1}, "'dry_run' must be True or False, got 1", id="option-int-for-bool"),
    pytest.param({"dry_run": "yes"}, "'dry_run' must be True or False, got 'yes'; papermill reads only those two "
                 "words as booleans: -p dry_run True", id="option-str-for-bool"),
    pytest.param({"component": 3}, "'component' must be str, got int", id="option-wrong-type"),
])
def test_runbook_parameters_refuses(change: dict[str, Any], phrase: str) -> None:
    ns = _namespace(dry_run=False, component="all")
    for key, value in change.items():
        if value is None:
            del ns[key]
        else:
            ns[key] = value
    with pytest.raises(ParameterError) as info:
        runbook_parameters(ns, notebook="deploy.ipynb", options=OPTIONS)
    message = str(info.value)
    _assert_one_line(message)
    assert message.startswith("deploy.ipynb parameters: ")
    assert phrase in message


def test_a_currency_option_is_an_iso_code() -> None:
    """A cost's currency is validated like any parameter: three capital letters, USD by default."""
    _, options = runbook_parameters(_namespace(currency="EUR"), notebook="x.ipynb", options={"currency": str})
    assert options == {"currency": "EUR"}
    for wrong in ("usd", "dollars", "$", ""):
        with pytest.raises(ParameterError, match=r"'currency' must be an ISO 4217 code .* such as USD") as info:
            runbook_parameters(_namespace(currency=wrong), notebook="x.ipynb", options={"currency": str})
        _assert_one_line(str(info.value))
    for name in ("cache_usage.ipynb", "retention.ipynb"):  # both show costs: both declare the option
        cells = json.loads((PROJECT_ROOT / "notebooks" / name).read_text())["cells"]
        declared = "".join("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
        assert 'currency: str = "USD"' in declared, name


def test_a_runbook_for_one_platform_refuses_another_before_its_credentials() -> None:
    """teardown.ipynb on a Cloud Foundry params file: the real problem (it is local-only) first, before
    the CF settings are judged or any CF credential is asked for."""
    ns = _namespace(confirm_teardown=False)
    ns.update(_load("staging"))
    with pytest.raises(ParameterError) as info:
        runbook_parameters(ns, notebook="teardown.ipynb", options={"confirm_teardown": bool}, only_on=("local",),
                           elsewhere="elsewhere use the CLI's down")
    message = str(info.value)
    _assert_one_line(message)
    assert "teardown is local-only" in message and "'cloudfoundry'" in message
    assert message.endswith("; elsewhere use the CLI's down")
    runbook_parameters(_namespace(confirm_teardown=False), notebook="teardown.ipynb",
                       options={"confirm_teardown": bool}, only_on=("local",))
    cells = json.loads((PROJECT_ROOT / "notebooks" / "teardown.ipynb").read_text())["cells"]
    assert any('only_on=("local",)' in "".join(c["source"]) and "registry_mirror down" in "".join(c["source"])
               for c in cells)  # the notebook asks for it, and names what stops another platform


def test_cf_dry_runs_without_credentials_refuse_for_that_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy's dry run (its preflight), rollback's and triage's first look (status) and verify_policies'
    checks on a Cloud Foundry params file with no credentials in the environment: each reads the
    foundation, so each refuses for the missing CF credentials, first, and for nothing else before it
    (not the upstream token, which only a change would send)."""
    from registry_mirror.errors import SecretMissingError

    for name in ("CF_USERNAME", "CF_PASSWORD", "CF_CLIENT_ID", "CF_CLIENT_SECRET", "DOCKERHUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text("allow: ['10.1.0.0/16']\ndeny: []\ntrusted_routers: ['10.2.0.0/24']\n")
    data = _load("staging")
    data["proxy"] = {**data["proxy"], "security_rules_file": str(rules)}
    settings = validate_settings(data, source="staging")
    target = platforms.platform_for(settings, settings.load_security_rules())
    report = target.preflight()
    assert [c.name for c in report.checks if not c.ok] == ["CF credentials"]
    assert "no Cloud Foundry credentials: set CF_USERNAME" in report.checks[0].detail
    for first_look in (target.status, target.policy_checks):
        with pytest.raises(SecretMissingError, match="^no Cloud Foundry credentials: set CF_USERNAME"):
            first_look()


def test_runbook_parameters_int_option_refuses_bool() -> None:
    ns = _namespace(retries=True)
    with pytest.raises(ParameterError, match="'retries' must be int, got bool"):
        runbook_parameters(ns, notebook="x.ipynb", options={"retries": int})


def test_runbook_parameters_validates_settings_like_a_file() -> None:
    ns = _namespace(dry_run=False, component="all")
    ns["registry"] = {**ns["registry"], "instances": 0}
    with pytest.raises(ParameterError) as info:
        runbook_parameters(ns, notebook="deploy.ipynb", options=OPTIONS)
    assert str(info.value).startswith("deploy.ipynb parameters: 'registry.instances'")


def test_settings_keys_are_the_model_fields() -> None:
    assert set(SETTINGS_KEYS) == set(Settings.model_fields)
    assert set(_load("local")) == set(SETTINGS_KEYS)


# ---------------------------------------------------------------------------------------------
# The private security-rules file


PRIVATE_RULES = {"allow": ["10.20.0.0/16", "192.0.2.0/24", "198.51.100.7/32"],
                 "deny": ["10.20.99.0/24"],
                 "trusted_routers": ["10.9.0.0/24", "10.9.1.0/24"]}


def _staging_with_rules_file(tmp_path: Path, rules: Any) -> Settings:
    rules_file = tmp_path / "private" / "security-rules.yaml"
    rules_file.parent.mkdir()
    rules_file.write_text(rules if isinstance(rules, str) else yaml.safe_dump(rules))
    data = _load("staging")
    data["proxy"]["security_rules_file"] = str(rules_file)
    return load_params_file(_write(tmp_path, data, "staging.yaml"))


def test_security_rules_file_is_loaded_and_never_shown(tmp_path: Path) -> None:
    settings = _staging_with_rules_file(tmp_path, PRIVATE_RULES)
    rules = settings.load_security_rules()
    assert isinstance(rules, SecurityRules)
    assert rules.allow == PRIVATE_RULES["allow"] and rules.deny == PRIVATE_RULES["deny"]
    assert rules.trusted_routers == PRIVATE_RULES["trusted_routers"]
    summary = rules.summary()
    assert {k: summary[k] for k in ("allow", "deny", "trusted_routers")} == {"allow": 3, "deny": 1,
                                                                            "trusted_routers": 2}
    # Counts of how the ranges nest (most specific wins), never the ranges themselves.
    assert summary["deny_inside_allow (deny wins there)"] == 1 and summary["trusted_inside_allow"] == 0
    shown = [repr(rules), str(rules), f"{rules}", repr(settings), str(settings)]
    for cidr in [c for ranges in PRIVATE_RULES.values() for c in ranges]:
        address = cidr.split("/")[0]
        for text in shown:
            assert address not in text, text


def test_security_rules_file_host_address_becomes_a_network(tmp_path: Path) -> None:
    settings = _staging_with_rules_file(tmp_path, {"allow": ["192.0.2.1"], "trusted_routers": ["10.9.0.0/24"]})
    assert settings.load_security_rules().allow == ["192.0.2.1/32"]


@pytest.mark.parametrize(("rules", "key", "phrase"), [
    pytest.param({**PRIVATE_RULES, "allow": ["10.0.0.0/33"]}, "allow[0]", "is not a CIDR", id="bad-cidr"),
    pytest.param({**PRIVATE_RULES, "deny": ["10.20.0.0/16"]}, "deny[0]", "both allowed and denied", id="both"),
    pytest.param({**PRIVATE_RULES, "allowed": ["10.0.0.0/8"]}, "allowed", "unknown key", id="unknown-key"),
    pytest.param({"deny": ["10.0.0.0/8"]}, "allow", "missing key", id="missing-allow"),
    pytest.param("allow: [10.0.0.0/8]\nallow: [0.0.0.0/0]\n", "duplicate key 'allow'", "is not valid YAML",
                 id="duplicate-key"),
])
def test_bad_security_rules_file_names_file_and_key(tmp_path: Path, rules: Any, key: str, phrase: str) -> None:
    settings = _staging_with_rules_file(tmp_path, rules)  # the params file itself is fine
    with pytest.raises(ParameterError) as info:
        settings.load_security_rules()
    message = str(info.value)
    _assert_one_line(message)
    assert message.startswith(f"proxy.security_rules_file ({tmp_path / 'private' / 'security-rules.yaml'}): ")
    assert key in message and phrase in message


def test_missing_security_rules_file(tmp_path: Path) -> None:
    settings = _staging_with_rules_file(tmp_path, PRIVATE_RULES)
    assert settings.proxy.security_rules_file is not None
    Path(settings.proxy.security_rules_file).unlink()
    with pytest.raises(ParameterError, match=r"^proxy\.security_rules_file \(.*\): file not found$"):
        settings.load_security_rules()


def test_local_rules_are_inline() -> None:
    settings = load_params_file(PARAMS / "local.yaml")
    rules = settings.load_security_rules()
    assert rules is settings.proxy.security_rules
    assert "127.0.0.66/32" in rules.deny
    # The params files are not mutated by loading them.
    assert copy.deepcopy(_load("local")) == _load("local")


# --- parameters as a kernel sees them (IPython's In history) ---------------------------------


def _kernel_namespace(extra_injected: str = "") -> dict[str, Any]:
    """What a kernel holds after the parameters cell, papermill's injected cell and later cells ran."""
    local = _load("local")
    params_cell = "# Settings: from params\n" + "\n".join(f"{k} = {v!r}" for k, v in local.items())
    params_cell += "\ndry_run: bool = False\ncomponent: str = 'all'\n"
    injected = "# Parameters\ndry_run = True\n" + extra_injected
    namespace: dict[str, Any] = {"In": ["", params_cell, injected, "settings, options = ..."]}
    exec(params_cell, {}, namespace)  # noqa: S102 - our own literal cells
    exec(injected, {}, namespace)  # noqa: S102
    # Names later cells define: re-running the validation cell must not call them parameters.
    namespace.update(settings=object(), options={}, target=object(), report=object(), rules=object())
    return namespace


def test_kernel_parameters_come_from_the_parameter_cells_not_later_cells() -> None:
    settings, options = runbook_parameters(_kernel_namespace(), notebook="deploy.ipynb",
                                           options={"dry_run": bool, "component": str})
    assert settings.environment == "local"
    assert options == {"dry_run": True, "component": "all"}  # the injected value wins


def test_kernel_parameter_injected_by_papermill_but_unknown_is_refused() -> None:
    with pytest.raises(ParameterError, match="unknown parameter 'colour'"):
        runbook_parameters(_kernel_namespace("colour = 'blue'\n"), notebook="deploy.ipynb",
                           options={"dry_run": bool, "component": str})


def test_rule_errors_never_quote_the_private_range(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"allow": ["10.99.0.0/16", "10.98.7.1/16"], "deny": ["10.99.0.0/16"],
                                     "trusted_routers": ["10.97.0.0/33"]}))
    staging = _load("staging")
    staging["proxy"]["security_rules_file"] = str(rules)
    settings = validate_settings(staging, source="staging")
    with pytest.raises(ParameterError) as err:
        settings.load_security_rules()
    message = str(err.value)
    assert "allow[1]" in message and "trusted_routers[0]" in message
    assert "10.9" not in message.replace(str(rules), "")


def test_a_damaged_stack_state_is_a_clear_error(tmp_path: Path) -> None:
    from registry_mirror.errors import DeployError
    from registry_mirror.platforms.local.state import StackState

    state = tmp_path / "stack.json"
    state.write_text('{"generation": "x", "processes": []}')
    with pytest.raises(DeployError, match="not a stack state"):
        StackState.load(state)


def test_a_trusted_range_on_the_container_network_is_refused_without_quoting_it(tmp_path: Path) -> None:
    overlay = {**PRIVATE_RULES, "trusted_routers": ["10.255.3.0/24"]}
    settings = _staging_with_rules_file(tmp_path, overlay)
    with pytest.raises(ParameterError) as info:
        settings.load_security_rules()
    message = str(info.value)
    _assert_one_line(message)
    assert "'trusted_routers[0]' overlaps the platform's container network" in message
    assert "10.255" not in message
    # The same range is fine where the overlay is elsewhere.
    data = _load("staging")
    data["cloudfoundry"]["container_network"] = "10.254.0.0/16"
    data["proxy"]["security_rules_file"] = settings.proxy.security_rules_file
    moved = load_params_file(_write(tmp_path, data, "moved.yaml"))
    assert moved.load_security_rules().trusted_routers == ["10.255.3.0/24"]


@pytest.mark.parametrize(("text", "phrase"), [
    pytest.param("", "is empty", id="empty"),
    pytest.param("{}\n", "is empty, so papermill injected nothing", id="empty-mapping"),
    pytest.param("- environment: local\n", "must be a mapping of keys to values, not a list", id="list"),
    pytest.param(None, "file not found", id="missing"),
])
def test_a_papermill_params_file_that_injects_nothing_is_refused_naming_it(tmp_path: Path, text: str | None,
                                                                          phrase: str) -> None:
    """The kernel reads its parent's command line (papermill's CLI) for the -f files: an empty one
    would otherwise run the notebook on its local defaults."""
    import subprocess

    from registry_mirror.papermill_files import check_papermill_files, papermill_files
    from registry_mirror.processes import wait_until

    if text is not None:
        (tmp_path / "env.yaml").write_text(text)
    # A stand-in for papermill's CLI process: a process whose command line names papermill and -f.
    parent = subprocess.Popen(["sh", "-c", "sleep 30; :", "papermill", "nb.ipynb", "out.ipynb", "-f",
                               "params/local.yaml", "--parameters_file", "env.yaml"], cwd=tmp_path)
    try:
        # The new process's command line reads empty for a moment after the fork.
        wait_until(lambda: Path(f"/proc/{parent.pid}/cmdline").read_bytes(), timeout=10, what="sh's command line")
        (tmp_path / "params").mkdir()
        (tmp_path / "params" / "local.yaml").write_text((PARAMS / "local.yaml").read_text())
        with pytest.raises(ParameterError) as info:
            check_papermill_files(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    message = str(info.value)
    _assert_one_line(message)
    assert message.startswith("params file env.yaml: ") and phrase in message
    assert papermill_files(["/venv/bin/python", "/venv/bin/papermill", "a", "b", "-fx.yaml", "-p", "f", "1"]) == [
        "x.yaml"]
    assert papermill_files(["/venv/bin/python", "-m", "pytest", "-f", "x.yaml"]) == []


def test_papermills_cwd_option_does_not_make_a_relative_params_file_missing(tmp_path: Path) -> None:
    """`papermill ... -f params/local.yaml --cwd notebooks`: papermill read the file from where it was
    started, then moved into notebooks/ before starting the kernel; the kernel's check must not then
    call the file missing (it did: "params file params/local.yaml: file not found")."""
    import subprocess

    from registry_mirror.papermill_files import check_papermill_files
    from registry_mirror.processes import wait_until

    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "local.yaml").write_text((PARAMS / "local.yaml").read_text())
    (tmp_path / "notebooks").mkdir()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    parent = subprocess.Popen(["sh", "-c", "sleep 30; :", "papermill", "nb.ipynb", "out.ipynb", "-f",
                               "params/local.yaml", "--cwd", "notebooks"], cwd=tmp_path / "notebooks")
    absolute = subprocess.Popen(["sh", "-c", "sleep 30; :", "papermill", "nb.ipynb", "out.ipynb", "-f",
                                 str(empty), "--cwd", "notebooks"], cwd=tmp_path / "notebooks")
    try:
        for process in (parent, absolute):
            wait_until(lambda p=process: Path(f"/proc/{p.pid}/cmdline").read_bytes(), timeout=10,
                       what="sh's command line")
        assert check_papermill_files(parent.pid) == []
        with pytest.raises(ParameterError, match="is empty"):  # an absolute path is still checked
            check_papermill_files(absolute.pid)
    finally:
        for process in (parent, absolute):
            process.kill()
            process.wait()


@pytest.mark.parametrize("text,phrase", [(None, "file not found"), ("", "is empty"), ("- a\n- b\n", "not a list"),
                                         ("a: [1\n", "not valid YAML")])
def test_papermills_cli_refuses_a_bad_params_file_in_one_sentence_before_any_kernel(
        tmp_path: Path, text: str | None, phrase: str) -> None:
    """The documented command itself, papermill's CLI: a bad -f file stops it before it starts a kernel
    or writes the output notebook, with one sentence naming the file and no traceback."""
    import sys

    if text is not None:
        (tmp_path / "env.yaml").write_text(text)
    out = tmp_path / "out.ipynb"
    papermill = Path(sys.executable).with_name("papermill")
    run = subprocess.run([str(papermill), str(PROJECT_ROOT / "notebooks" / "teardown.ipynb"), str(out), "-f",
                          str(tmp_path / "env.yaml")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and not out.exists()
    line = run.stderr.strip()
    _assert_one_line(line)
    assert line.startswith(f"papermill: params file {tmp_path / 'env.yaml'}: ") and phrase in line, line
