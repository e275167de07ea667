"""pytest fixtures for the test authorization server (node oidc-provider, see ``idp.py``).

``idp_server`` starts one server for the whole session; ``idp`` hands the same server to a test
after clearing faults, counters and TTL changes, so tests cannot leak faults into each other.
Grants survive: tests seed their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.idp import IdpServer

__all__ = ["idp", "idp_server"]


@pytest.fixture(scope="session")
def idp_server() -> Iterator[IdpServer]:
    with IdpServer() as server:
        yield server


@pytest.fixture
def idp(idp_server: IdpServer) -> Iterator[IdpServer]:
    idp_server.reset()
    yield idp_server
    idp_server.reset()
