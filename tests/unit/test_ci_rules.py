"""In CI a skipped test is a failure (tests/conftest.py): prove it with a test that skips, run in-process
by pytester with the suite's own hook, once with CI set and once without."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SKIPPING_TEST = """
import pytest

def test_skip_probe():
    pytest.skip("the probe asked to skip")
"""
# The hook as the suite registers it, not a copy: the probe run loads it from tests/conftest.py.
CONFTEST = "from tests.conftest import pytest_runtest_makereport  # noqa: F401\n"


@pytest.mark.parametrize("ci,failed,skipped,says", [
    ("true", 1, 0, "skipped in CI, which counts as a failure: "),
    ("", 0, 1, "SKIPPED"),
])
def test_a_skip_fails_in_ci_and_only_there(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str,
                                           failed: int, skipped: int, says: str) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_probe=SKIPPING_TEST)
    result = pytester.runpytest_inprocess("-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=")
    result.assert_outcomes(failed=failed, skipped=skipped)
    assert result.ret == (1 if failed else 0)
    assert says in result.stdout.str()
    assert "the probe asked to skip" in result.stdout.str()
