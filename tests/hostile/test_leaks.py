"""The canary scan of the whole program: secrets never leave, even when the program crashes.

A real sidecar process, at debug level, holds canary values: the refresh token, the client
secret, and every access and refresh token the raw server issues (``CANARY-…``). Exceptions
are forced inside the exchange and the write-back with those values in their messages
(:mod:`tests.hostile.faulty_sidecar`), in both log formats; the server answers with error
bodies that quote the token back. Nothing the process prints (its log, its crash reports,
``/healthz``, ``/readyz``, ``/livez``, ``/metrics``, the output of ``check`` and ``once``)
may contain any canary, nor its base64 or URL encoding; and the rotation survives the crashes
that the journal can cover.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile.harness import Sidecar, canary, log_events
from tests.support.deployment import KV_PATH
from tests.support.rawserver import Recorded, Reply

pytestmark = pytest.mark.integration

FAULTS = "exchange_request,writeback,exchange_answer"


def look_everywhere(sidecar: Sidecar) -> None:
    """Fetch every endpoint (the harness scans what it fetches)."""
    for path in ("/healthz", "/readyz", "/livez", "/metrics"):
        sidecar.get(path)


def crash(sidecar: Sidecar, *, timeout: float = 15) -> list[dict[str, object]]:
    """Start with the faults armed and wait for the forced crash; return its events."""
    before = len(sidecar.events("sidecar.crashed"))
    process = sidecar.start(faults=FAULTS)
    assert process.wait(timeout=timeout) == 1, sidecar.dep.logs()[-4000:]
    return sidecar.events("sidecar.crashed")[before:]


def test_no_secret_leaves_through_crashes_errors_or_endpoints(sidecar: Sidecar) -> None:
    issuer = sidecar.issuer(expires_in=3)

    def quote_it_back(request: Recorded) -> Reply:
        presented = request.form.get("refresh_token", [""])[0]
        return Reply(
            400,
            {"error": "invalid_request", "error_description": f"bad token {presented}"},
        )

    sidecar.configure(
        quote_it_back,
        issuer,
        refresh={"secret_poll_seconds": 0.5},
        sections={"events": {"enabled": True, "dedupe_seconds": 0}},
    )
    # Kubernetes Events go to the raw server standing in for the API server.
    events_path = "/k8s/api/v1/namespaces/hostile/events"
    sidecar.route.on(events_path, lambda request: Reply(201, request.body))
    sidecar.extra_env.update(
        HOSTILE_K8S_API=sidecar.route.url("/k8s"), POD_NAMESPACE="hostile", POD_UID="uid-1"
    )

    # 1. console format: the exchange raises with the whole request in its message.
    sidecar.edit_config(lambda c: c["log"].__setitem__("format", "console"))
    process = sidecar.start(faults=FAULTS)
    assert process.wait(timeout=15) == 1
    assert "sidecar.crashed" in sidecar.dep.logs()
    assert "forced in the exchange" in sidecar.dep.logs()
    assert issuer.issued_refresh == []  # nothing was sent
    sidecar.edit_config(lambda c: c["log"].__setitem__("format", "json"))

    # 2. The write-back of the rotated token raises: the journal keeps it for the restart.
    crashed = crash(sidecar)
    assert [e["error"] for e in crashed] == ["RuntimeError"]
    assert "forced in the write-back" in str(crashed[0]["exception"])
    assert issuer.issued_refresh, "the exchange happened before the write-back"
    assert list((sidecar.dep.root / "journal").glob("*.json"))

    # 3. Restarted: the journal's token reaches Vault; then the next answer is parsed and an
    # exception carries the new tokens before the journal could keep them.
    crashed = crash(sidecar)
    assert "forced after the exchange" in str(crashed[0]["exception"])
    assert sidecar.events("journal.recovered")
    assert sidecar.vault()[0]["refresh_token"] == issuer.issued_refresh[0]

    # 4. Restarted without faults: Vault's token was spent by the lost answer, so the server
    # refuses it; an operator re-seeds and the sidecar picks that up by itself.
    sidecar.start(faults="")
    sidecar.wait_state("rejected", timeout=15)
    look_everywhere(sidecar)
    reseeded = canary("RESEED")
    sidecar.scan.secret(reseeded, "the re-seeded refresh token")
    data, _ = sidecar.vault()
    sidecar.dep.openbao.put_secret(KV_PATH, {**data, "refresh_token": reseeded})
    issuer.current = reseeded
    sidecar.wait_state("valid", timeout=15)
    sidecar.wait(lambda: len(issuer.issued_refresh) >= 5, timeout=15)
    look_everywhere(sidecar)
    assert sidecar.stop() == 0

    # 5. `once` crashing the same way (faults armed afresh, no fresh token to reuse), and
    # `check`: their output is scanned too.
    data, _ = sidecar.vault()
    data.pop("token_sidecar")
    sidecar.dep.openbao.put_secret(KV_PATH, data)
    sidecar.dep.root.joinpath("faults").rename(sidecar.dep.root / "faults-fired")
    result = sidecar.cli("once", faults=FAULTS)
    assert result.returncode == 1
    assert [e["error"] for e in log_events(result.stderr, "sidecar.crashed")] == ["RuntimeError"]
    assert "forced in the exchange" in result.stderr
    assert sidecar.cli("check").returncode == 0

    # Every token was presented once, but for the one whose answer the crash in step 3 lost.
    assert issuer.reuse == 1

    # The Events the API server received: the rejection and the recovery, and no secret.
    sent = sidecar.route.requests(events_path)
    for request in sent:
        sidecar.scan.text("a Kubernetes Event", request.body)
    reasons = [json.loads(request.body)["reason"] for request in sent]
    assert "RefreshTokenRejected" in reasons
    assert "TokenRecovered" in reasons
