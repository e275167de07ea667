"""A journal that stops working mid-run loses no token; `check` says when it cannot work.

Real sidecar processes, real OpenBao, real oidc-provider (rotating, revoking on reuse).
"""

from __future__ import annotations

import pytest

from tests.integration.test_rotation import no_reuse
from tests.support.deployment import (
    Deployment,
    assert_vault_holds_the_live_token,
    wait_for,
)

pytestmark = pytest.mark.integration


PENDING = 'token_sidecar_writeback_pending{credential="billing"} 1.0'


def test_a_journal_made_unusable_mid_run_loses_no_token(deployment: Deployment) -> None:
    dep = deployment
    # Alone with its secret, so that it goes on refreshing from memory while Vault is sealed
    # below (replicas stop at their claim's end instead).
    dep.write_config(sections={"coordination": {"exclusive": True}})
    dep.start()
    assert wait_for(lambda: dep.vault_secret()[1] >= 3, timeout=15), dep.logs()
    assert dep.process is not None

    # A file in the way: the directory can be neither created nor written any more.
    journal = dep.root / "journal"
    journal.rename(dep.root / "journal.moved")
    journal.write_text("not a directory")
    version = dep.vault_secret()[1]
    assert wait_for(lambda: dep.vault_secret()[1] >= version + 4, timeout=20), dep.logs()
    assert dep.process.poll() is None, dep.logs()[-3000:]
    assert '"journal.write_failed"' in dep.logs()

    # Vault goes away too: the rotated token now lives only in memory, unpublished, and the
    # write-back is retried until Vault is back.
    exchanges = dep.idp.stats()["refresh_succeeded"]
    dep.openbao.seal()
    try:
        assert wait_for(lambda: dep.idp.stats()["refresh_succeeded"] > exchanges, timeout=15), (
            dep.logs()
        )
        assert wait_for(lambda: PENDING in dep.get("/metrics").text, timeout=10)
        assert dep.process.poll() is None, dep.logs()[-3000:]
    finally:
        dep.openbao.unseal()
    version = dep.vault_secret()[1]
    assert wait_for(lambda: dep.vault_secret()[1] >= version + 4, timeout=20), dep.logs()
    assert wait_for(lambda: dep.get("/readyz").status_code == 200, timeout=10), dep.logs()
    assert dep.stop() == 0
    no_reuse(dep)
    assert_vault_holds_the_live_token(dep)


def test_check_reports_an_unusable_journal_without_creating_anything(
    deployment: Deployment,
) -> None:
    dep = deployment
    journal = dep.root / "journal"
    absent = dep.cli("check")
    assert absent.returncode == 0, absent.stdout + absent.stderr
    assert f"ok   journal: {journal} usable" in absent.stdout
    assert not journal.exists()  # inspected, not created

    journal.write_text("in the way")
    blocked = dep.cli("check")
    assert blocked.returncode == 1
    assert f"FAIL journal: journal.dir: {journal} is not a directory" in blocked.stdout
    assert journal.read_text() == "in the way"
