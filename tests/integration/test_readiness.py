"""Readiness that means what the app needs, also for very short tokens.

A real sidecar process against real OpenBao and oidc-provider issuing 2- and 4-second access
tokens, with the default ``ready_margin_seconds`` (5 s, longer than those tokens live). A
sidecar doing everything right must be ready nearly all the time, and whenever ``/readyz``
says 200 the file must hold a token that is still valid.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx
import pytest

from tests.integration.test_rotation import no_reuse
from tests.support.deployment import Deployment, assert_vault_holds_the_live_token, wait_for

pytestmark = pytest.mark.integration

POLL_SECONDS = 20.0


def ready(dep: Deployment) -> bool:
    try:
        return dep.get("/readyz").status_code == 200
    except httpx.HTTPError:  # not listening yet
        return False


@pytest.mark.parametrize("lifetime", [2, 4])
def test_a_healthy_sidecar_with_short_tokens_is_ready(
    deployment: Deployment, lifetime: int
) -> None:
    dep = deployment
    dep.idp.set_ttl(access_token=lifetime)
    dep.write_config(refresh={"ready_margin_seconds": 5, "min_margin_seconds": 60})
    dep.start()
    assert wait_for(lambda: ready(dep), timeout=20), dep.logs()
    oks = polls = 0
    problems: list[str] = []
    url = f"http://127.0.0.1:{dep.port}/readyz"
    with httpx.Client(timeout=5) as client:
        ends = time.monotonic() + POLL_SECONDS
        while time.monotonic() < ends:
            status = client.get(url).status_code
            polls += 1
            if status == 200:
                oks += 1
                expires = json.loads((dep.output_dir / "token.json").read_text())["expires_at"]
                stamp = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
                if stamp + 1 <= time.time():  # whole seconds, rounded down
                    problems.append(f"ready with an expired token.json ({expires})")
            time.sleep(0.02)
    exchanges = dep.idp.stats()["refresh_succeeded"]
    assert dep.stop() == 0
    assert problems == []
    assert polls >= 100
    assert oks / polls > 0.95, f"ready on {oks} of {polls} polls\n{dep.logs()[-3000:]}"
    assert exchanges >= POLL_SECONDS / lifetime  # it really was refreshing all along
    no_reuse(dep)
    assert_vault_holds_the_live_token(dep)
