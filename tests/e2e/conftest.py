"""The ``e2e`` marker, and a guard: the kind test runs only when ``-m`` asks for ``e2e``.

The marker is registered here as well as (by the lead) in pyproject.toml, so that
``--strict-markers`` accepts it either way. Selecting it explicitly (``make e2e`` runs
``pytest -m e2e tests/e2e``) is required because the test creates a cluster and builds an
image: a plain ``pytest`` on a machine with Docker and kind must not do that by surprise.
"""

from __future__ import annotations

import pytest

E2E_HELP = (
    "e2e: end-to-end test in a kind cluster (needs a Docker engine, kind and kubectl); "
    "run with `make e2e`"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", E2E_HELP)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "e2e" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="kind end-to-end test: select it with -m e2e (make e2e)")
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)
