"""Fixtures of the integration tests: the security proxy's public endpoint on both renderings, the
shared local stack's and the Cloud Foundry rendering's behind the edge stand-ins
(tests/integration/cf_mirror_app.py). A test that takes `endpoint` runs once per rendering."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry_mirror.platforms.local import LocalPlatform
from tests.integration.cf_mirror_app import cf_chain
from tests.integration.endpoints import Endpoint


@pytest.fixture(scope="module")
def cf_endpoint(stack: LocalPlatform) -> Iterator[Endpoint]:
    with cf_chain(stack) as chain:
        yield Endpoint("cf", "127.0.0.1", chain.public)


@pytest.fixture(params=["local", "cf"])
def endpoint(request: pytest.FixtureRequest, stack: LocalPlatform) -> Endpoint:
    if request.param == "local":
        host, port = stack.endpoint.rsplit(":", 1)
        return Endpoint("local", host, int(port))
    return request.getfixturevalue("cf_endpoint")
