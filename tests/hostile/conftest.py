"""Fixtures for the hostile-input suite: the raw server, the canary scan and the harness.

Every test that runs the sidecar also checks, all along, that ``/readyz`` never answers 200
while the token files are torn, missing or expired. Every test here ends with a canary scan
(:mod:`tests.hostile.canary`): whatever the test recorded (log files, CLI output, health and
metrics bodies, error messages) must not contain any secret it registered. The servers are
shared with the rest of the suite (one OpenBao and one oidc-provider per session, reset per
test) and the raw server is started once.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.canary import CanaryScan
from tests.hostile.harness import FOREIGN_PYTHON, Sidecar
from tests.support.deployment import Deployment
from tests.support.rawserver import RawServer, Route


@pytest.fixture(scope="session")
def raw_server() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


@pytest.fixture
def raw(raw_server: RawServer) -> Route:
    """A fresh path prefix on the shared raw server."""
    return raw_server.route()


@pytest.fixture
def leaks() -> Iterator[CanaryScan]:
    """The test's canary scan, asserted clean when the test ends."""
    scan = CanaryScan()
    yield scan
    scan.assert_clean()


@pytest.fixture
def sidecar(deployment: Deployment, raw: Route, leaks: CanaryScan) -> Iterator[Sidecar]:
    harness = Sidecar(deployment, raw, leaks)
    harness.seed()
    try:
        yield harness
    finally:
        harness.close()
    if harness.watcher is not None:
        assert harness.watcher.problems == [], "/readyz promised what the files did not hold"


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory every user can enter (pytest's own temporary directories are 0700)."""
    if not Path(FOREIGN_PYTHON).exists():
        pytest.skip(f"no {FOREIGN_PYTHON} to run the sidecar as another user")
    directory = Path(tempfile.mkdtemp(prefix="token-sidecar-hostile-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)
