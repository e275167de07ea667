"""Each process claims under its own identity, even where pod and host names repeat.

Real sidecar processes, real OpenBao, real oidc-provider (which revokes the grant when a spent
refresh token is presented: its counters are the ground truth). The token endpoint is slowed
down so that every exchange is still in flight while the other processes look at the claim:
processes that took each other's claims for their own would present one token together.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.integration.test_rotation import log_events, no_reuse
from tests.support.deployment import (
    Deployment,
    Reader,
    assert_vault_holds_the_live_token,
    wait_for,
)

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def holders(dep: Deployment) -> list[str]:
    return [e["holder"] for e in log_events(dep) if e.get("event") == "sidecar.started"]


def test_processes_sharing_a_host_name_never_present_a_token_together(
    deployment: Deployment,
) -> None:
    """Three `run` processes on one machine, one secret, no POD_NAME, no coordination.holder:
    systemd units on one VM, hostNetwork pods on one node, `docker run --network host`."""
    deployment.pod_name = False
    deployment.idp.set_fault(mode="hang", seconds=0.6, count=-1)  # every exchange in flight 0.6 s
    replicas = [deployment, deployment.replica("unit-1"), deployment.replica("unit-2")]
    readers = [Reader(r.output_dir) for r in replicas]
    for replica in replicas:
        replica.start()
    for replica, reader in zip(replicas, readers, strict=True):
        assert wait_for((replica.output_dir / "access_token").exists, timeout=20), replica.logs()
        reader.start()
    time.sleep(16)  # about six rotations of 4-second tokens
    for reader in readers:
        reader.stopping.set()
        reader.join(timeout=5)
    deployment.idp.clear_faults()
    for replica in replicas:
        assert replica.stop() == 0, replica.logs()[-3000:]
    stats = no_reuse(deployment)
    assert stats["refresh_succeeded"] >= 4, stats
    for reader in readers:
        assert reader.problems == []
        assert len(reader.tokens) >= 3  # every process kept getting fresh tokens
    names = [holder for replica in replicas for holder in holders(replica)]
    assert len(names) == 3 and len(set(names)) == 3, names
    for name in names:  # readable: the host name, then a UUID
        assert re.fullmatch(re.escape(socket.gethostname()) + "_" + UUID, name), name
    assert_vault_holds_the_live_token(deployment)


def test_once_beside_run_in_the_same_pod_waits_for_the_running_exchange(
    deployment: Deployment,
) -> None:
    """`kubectl exec ... token-sidecar once` beside the sidecar: same POD_NAME, same journal.

    The running sidecar's exchange is held at the server while `once` starts; `once` must see
    a claim that is not its own, wait for the result and reuse it, never exchange the same
    refresh token in parallel.
    """
    dep = deployment
    dep.start()
    assert wait_for(lambda: dep.vault_secret()[1] >= 3, timeout=15), dep.logs()
    requests = dep.idp.stats()["token_requests"]
    dep.idp.set_fault(mode="hang", seconds=2.0, count=1)  # the next exchange: held 2 s
    assert wait_for(lambda: dep.idp.stats()["token_requests"] > requests, timeout=10), dep.logs()
    once = dep.cli("once", timeout=60)
    assert once.returncode == 0, once.stderr[-3000:]
    events = [line for line in once.stderr.splitlines() if '"event"' in line]
    assert any('"token.reused"' in line for line in events), once.stderr[-3000:]
    assert any('"journal.busy"' in line for line in events), once.stderr[-3000:]
    assert dep.stop() == 0
    no_reuse(dep)
    assert_vault_holds_the_live_token(dep)


def test_a_restarted_process_takes_over_the_claim_its_predecessor_left(
    deployment: Deployment,
) -> None:
    """Killed mid-exchange, its claim still live: the next process on the same journal knows
    (the journal's lock) that the claimant is gone, and does not wait the claim out."""
    dep = deployment
    dep.write_config(refresh={"secret_poll_seconds": 1})
    dep.start()
    assert wait_for(lambda: dep.vault_secret()[1] >= 3, timeout=15), dep.logs()
    requests = dep.idp.stats()["token_requests"]
    # Held long enough that the kill lands while the request is at the server; a client
    # that gave up never reaches the provider, so the token in Vault stays unspent.
    dep.idp.set_fault(mode="hang", seconds=3.0, count=1)
    assert wait_for(lambda: dep.idp.stats()["token_requests"] > requests, timeout=10), dep.logs()
    dep.kill()
    data, version = dep.vault_secret()
    claim = data["token_sidecar"]["claim"]
    assert claim["until"] > time.time() + 20  # a claim of 30 s, still live
    killed = holders(dep)[-1]
    assert claim["holder"] == killed
    time.sleep(3.5)  # the held request was dropped at the server, never forwarded
    restarted = time.monotonic()
    dep.start()
    assert wait_for(lambda: dep.vault_secret()[1] >= version + 2, timeout=25), dep.logs()
    assert time.monotonic() - restarted < 15  # far less than the 35 s the claim had left
    taken = [e for e in log_events(dep) if e.get("event") == "claim.taken_over"]
    assert taken and taken[-1]["predecessor"] == killed
    assert dep.stop() == 0
    no_reuse(dep)
    assert_vault_holds_the_live_token(dep)
