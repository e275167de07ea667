"""The chaos soak against real OpenBao, real oidc-provider and real sidecar processes.

The two-minute variant runs with every ``make test``; the ten-minute one is ``make soak``
(which also writes RELIABILITY.md) or ``pytest -m slow tests/soak``. ``SOAK_SEED`` repeats a
run's random choices (the seed is printed, and named in every failure).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.soak.plan import Plan
from tests.soak.soak import failures, soak
from tests.support.idp import IdpServer
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.integration


def _seed() -> int:
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"soak seed {seed} (SOAK_SEED={seed} repeats its choices)")
    return seed


def _summary(record: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in record.items() if k in ("chaos", "server", "operator"))


def test_two_minute_soak(openbao: OpenBaoServer, idp: IdpServer, tmp_path: Path) -> None:
    """Two minutes of chaos: no refresh token presented twice, no grant revoked but by the
    one permitted retry, every ready answer backed by a valid file, Vault ends live."""
    plan = Plan(seconds=120, seed=_seed(), min_kills=30)
    record = soak(openbao, idp, tmp_path, plan)
    assert failures(record) == [], f"seed {plan.seed}: {_summary(record)}"


@pytest.mark.slow
def test_ten_minute_soak(openbao: OpenBaoServer, idp: IdpServer, tmp_path: Path) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    plan = Plan(seconds=seconds, seed=_seed(), min_kills=int(200 * seconds / 600))
    record = soak(openbao, idp, tmp_path, plan)
    assert failures(record) == [], f"seed {plan.seed}: {_summary(record)}"
