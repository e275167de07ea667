"""Vault misbehaving under a running sidecar: real OpenBao, and a fault-injecting proxy.

Statuses OpenBao does not give on demand (412, 429, 500) come from :class:`Faults`, a proxy
in front of the real server that answers chosen requests itself. Each case asserts the
error kind and message the sidecar logs and reports, that no rotated refresh token is lost
(the real oidc-provider counts any reuse, and Vault must end up holding the live token),
and what the files and metrics show meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.harness import Sidecar, assert_chain_intact, log_events, use_the_idp
from tests.support.deployment import KV_PATH
from tests.support.rawserver import Faults, Recorded, Reply

pytestmark = pytest.mark.integration

LOCATION = "secret/apps/e2e/billing"


def failed(sidecar: Sidecar, event: str) -> list[tuple[str, str]]:
    return [(e["error"], e["message"]) for e in sidecar.events(event)]


# -- the secret itself ---------------------------------------------------------------------------


def test_a_missing_secret_is_reported_until_it_is_created(sidecar: Sidecar) -> None:
    sidecar.dep.openbao.root_client().secrets.kv.v2.delete_metadata_and_all_versions(
        KV_PATH, mount_point="secret"
    )
    sidecar.configure(sidecar.issuer(), refresh={"secret_poll_seconds": 0.5})
    sidecar.start()
    health = sidecar.wait_state("failed")
    assert health["last_error"] == "secret_not_found"
    assert failed(sidecar, "secret.read_failed")[0] == (
        "secret_not_found",
        f"vault read {LOCATION}: no secret at {LOCATION}",
    )
    assert sidecar.get("/readyz").status_code == 503
    assert sidecar.vault_requests("read", "secret_not_found") >= 1
    assert sidecar.route.requests("/token") == []

    sidecar.seed()  # the operator creates it
    sidecar.wait_state("valid")
    assert sidecar.get("/readyz").status_code == 200
    assert sidecar.stop() == 0


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ({"drop": ("refresh_token",)}, "secret_invalid", "field 'refresh_token' is missing"),
        ({"refresh_token": ""}, "secret_invalid", "field 'refresh_token' is empty"),
        ({"refresh_token": "   "}, "secret_invalid", "field 'refresh_token' is empty"),
        ({"refresh_token": 12345}, "secret_invalid", "field 'refresh_token' is not a string"),
        (
            {"refresh_token": ["CANARY-RT-in-a-list-0123456789"]},
            "secret_invalid",
            "field 'refresh_token' is not a string",
        ),
        (
            {"refresh_token": {"value": "CANARY-RT-in-a-map-0123456789"}},
            "secret_invalid",
            "field 'refresh_token' is not a string",
        ),
        ({"client_secret": 42}, "secret_invalid", "field 'client_secret' is not a string"),
        (
            {"drop": ("client_secret",)},
            "secret_invalid",
            "field client_secret is required for client_secret_basic",
        ),
        (
            {"drop": ("client_id",)},
            "secret_invalid",
            "no client_id in the credential's configuration or the secret",
        ),
    ],
    ids=[
        "rt-missing",
        "rt-empty",
        "rt-blank",
        "rt-number",
        "rt-list",
        "rt-map",
        "cs-number",
        "cs-missing",
        "client-id-missing",
    ],
)
def test_an_unusable_secret_is_refused_naming_the_field(
    sidecar: Sidecar, change: dict[str, Any], kind: str, message: str
) -> None:
    sidecar.scan.secret("CANARY-RT-in-a-list-0123456789", "a refresh token in a list")
    sidecar.scan.secret("CANARY-RT-in-a-map-0123456789", "a refresh token in a map")
    version = sidecar.seed(**change)
    sidecar.configure(sidecar.issuer())
    result = sidecar.once()
    assert result.returncode == 1
    events = log_events(result.stderr, "once.failed")
    assert [(e["error"], e["message"]) for e in events] == [(kind, f"{LOCATION}: {message}")]
    assert sidecar.route.requests("/token") == []
    assert sidecar.vault()[1] == version  # nothing written: not even a claim
    assert not sidecar.dep.output_dir.joinpath("access_token").exists()


@pytest.mark.parametrize("how", ["deleted", "destroyed"])
def test_versions_deleted_and_restarted_at_one(sidecar: Sidecar, how: str) -> None:
    """The latest version soft-deleted (or destroyed), then the whole history wiped and the
    secret written again at version 1, below what the sidecar last saw: reported, then
    adopted."""
    use_the_idp(sidecar, refresh={"secret_poll_seconds": 0.5})
    sidecar.start()
    sidecar.wait(lambda: sidecar.vault()[1] >= 5, timeout=15)
    if how == "deleted":
        sidecar.dep.openbao.delete_latest(KV_PATH)
    else:
        sidecar.dep.openbao.destroy_versions(KV_PATH, [sidecar.vault()[1]])
    health = sidecar.wait_state("failed", timeout=10)
    assert health["last_error"] == "secret_not_found"
    # Meanwhile the current token is still served until it expires.
    assert (sidecar.dep.output_dir / "access_token").exists()

    sidecar.dep.openbao.root_client().secrets.kv.v2.delete_metadata_and_all_versions(
        KV_PATH, mount_point="secret"
    )
    seeded = sidecar.dep.idp.seed_refresh_token()
    sidecar.scan.secret(seeded, "the re-seeded refresh token")
    assert (
        sidecar.seed(
            refresh_token=seeded, client_secret=sidecar.dep.idp.client_secret("client-basic")
        )
        == 1
    )
    sidecar.wait_state("valid", timeout=10)
    sidecar.wait(lambda: sidecar.vault()[1] >= 3, timeout=10)
    assert sidecar.vault()[0]["refresh_token"] != seeded
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


# -- policy and login ----------------------------------------------------------------------------


def test_policy_rewritten_read_only_while_running(sidecar: Sidecar) -> None:
    """Without write permission no claim can be made, so nothing is exchanged (and nothing
    rotated can be lost); the file is served until it expires, then the pod is not ready."""
    use_the_idp(sidecar, refresh={"secret_poll_seconds": 0.5})
    sidecar.start()
    sidecar.wait_state("valid")
    bao = sidecar.dep.openbao
    bao.write_kv_policy("e2e-billing", KV_PATH, write=False)
    exchanges = sidecar.dep.idp.stats()["refresh_succeeded"]
    health = sidecar.wait_state("failed", timeout=10)
    assert health["last_error"] == "vault_forbidden"
    assert failed(sidecar, "claim.failed")[0] == (
        "vault_forbidden",
        f"vault write {LOCATION}: permission denied (HTTP 403) after a fresh login",
    )
    assert sidecar.dep.idp.stats()["refresh_succeeded"] <= exchanges + 1
    sidecar.wait(lambda: sidecar.get("/readyz").status_code == 503, timeout=10)
    assert "last_error=vault_forbidden" in sidecar.get("/readyz").text
    assert sidecar.vault_requests("write", "vault_forbidden") >= 2

    bao.write_kv_policy("e2e-billing", KV_PATH)
    sidecar.wait(lambda: sidecar.get("/readyz").status_code == 200, timeout=10)
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


def test_a_login_whose_token_lacks_the_policy(sidecar: Sidecar) -> None:
    sidecar.dep.openbao.create_role("e2e", ["default"])
    sidecar.configure(sidecar.issuer())
    result = sidecar.cli("check")
    assert result.returncode == 1
    assert (
        f"FAIL credential billing: vault read {LOCATION}: permission denied (HTTP 403) after a "
        "fresh login"
    ) in result.stdout
    result = sidecar.once()
    assert result.returncode == 1
    assert [(e["error"], e["message"]) for e in log_events(result.stderr, "once.failed")] == [
        (
            "vault_forbidden",
            f"vault read {LOCATION}: permission denied (HTTP 403) after a fresh login",
        )
    ]
    assert [r.method for r in sidecar.route.requests("/token")] == ["GET"]  # check's probe


@pytest.mark.parametrize("problem", ["missing", "empty", "directory", "binary", "garbage"])
def test_an_unusable_service_account_token(sidecar: Sidecar, problem: str) -> None:
    jwt = sidecar.dep.root / "sa-token"
    jwt.unlink()
    if problem == "empty":
        jwt.write_text("\n")
    elif problem == "directory":
        jwt.mkdir()
    elif problem == "binary":
        jwt.write_bytes(b"\xff\xfe\x00jwt")
    elif problem == "garbage":
        jwt.write_text("not.a.jwt")
    sidecar.configure(sidecar.issuer())
    expected = {
        "missing": f"cannot read the JWT file {jwt}: No such file or directory",
        "empty": f"the JWT file {jwt} is empty",
        "directory": f"cannot read the JWT file {jwt}: Is a directory",
        "binary": f"the JWT file {jwt} is not UTF-8 text",
        "garbage": "vault login auth/kubernetes: login as role 'e2e' refused (HTTP 400)",
    }[problem]
    result = sidecar.cli("check")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"FAIL vault: {expected}"
    result = sidecar.once()
    assert result.returncode == 1
    events = log_events(result.stderr, "once.failed")
    assert [(e["error"], e["message"]) for e in events] == [("vault_auth_failed", expected)]


def test_a_service_account_token_the_sidecar_user_cannot_read(
    sidecar: Sidecar, public: Path
) -> None:
    """Mode bits do not stop root, so this runs ``check`` as another user (as the chart
    does): a JWT file only root may read is refused with the path and the reason."""
    jwt = public / "sa-token"
    jwt.write_text((sidecar.dep.root / "sa-token").read_text())
    jwt.chmod(0o600)
    sidecar.configure(sidecar.issuer(), output_dir=str(public / "tokens"))
    sidecar.edit_config(lambda c: c["vault"]["auth"].__setitem__("jwt_file", str(jwt)))
    config = public / "config.yaml"
    config.write_text(sidecar.dep.config_path.read_text())
    config.chmod(0o644)
    result = sidecar.cli_as(65534, 65534, config, "check")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[0] == (
        f"FAIL vault: cannot read the JWT file {jwt}: Permission denied"
    )


def test_a_service_account_token_that_appears_later(sidecar: Sidecar) -> None:
    jwt = sidecar.dep.root / "sa-token"
    content = jwt.read_text()
    jwt.unlink()
    sidecar.configure(sidecar.issuer(), refresh={"secret_poll_seconds": 0.5})
    sidecar.start()
    health = sidecar.wait_state("failed")
    assert health["last_error"] == "vault_auth_failed"
    # No request reached Vault (the file was unusable), so only the state says it.
    assert sidecar.vault_requests("login", "vault_auth_failed") == 0
    assert sidecar.metric("token_sidecar_state", state="failed") == 1
    jwt.write_text(content)  # the kubelet projects the token
    sidecar.wait_state("valid")
    assert sidecar.stop() == 0


# -- Vault's temporary trouble, through a fault-injecting proxy ----------------------------------


def vault_behind(sidecar: Sidecar, faults: Faults, **vault: Any) -> None:
    sidecar.route.otherwise(faults)
    use_the_idp(sidecar, sections={"vault": {"address": sidecar.route.url(""), **vault}})


RESULT_WRITE: dict[str, Any] = {
    "method": "POST",
    "path": f"/v1/secret/data/{KV_PATH}",
    "body": b'"access"',
}


@pytest.mark.parametrize(
    ("status", "headers", "kind", "problem"),
    [
        (403, {}, "vault_forbidden", "permission denied (HTTP 403) after a fresh login"),
        (412, {}, "vault_unavailable", "not yet consistent (HTTP 412)"),
        (429, {"Retry-After": "1"}, "vault_unavailable", "rate limited (HTTP 429)"),
        (500, {}, "vault_unavailable", "server error (HTTP 500)"),
        (503, {}, "vault_unavailable", "Vault is sealed or unavailable (HTTP 503)"),
    ],
)
def test_the_write_back_of_a_rotated_token_refused_then_accepted(
    sidecar: Sidecar, status: int, headers: dict[str, str], kind: str, problem: str
) -> None:
    """The rotated token waits in the journal (the access token is published meanwhile) and
    the write-back is retried until Vault takes it: nothing lost, nothing presented twice."""
    faults = Faults(sidecar.dep.openbao.address)
    faults.arm(Reply(status, {"errors": ["injected"]}, headers=headers), count=2, **RESULT_WRITE)
    vault_behind(sidecar, faults)
    sidecar.start()
    sidecar.wait(lambda: sidecar.events("writeback.succeeded"), timeout=15)
    messages = failed(sidecar, "writeback.failed")
    expected = (kind, f"vault write {LOCATION}: {problem}")
    assert messages[: 1 if status == 403 else 2] == [expected] * (1 if status == 403 else 2)
    if status == 429:
        retries = [e["retry_in"] for e in sidecar.events("writeback.failed")]
        assert min(retries) >= 1.0  # Retry-After honoured
    assert len(faults.hits) == 2
    assert sidecar.events("token.refreshed")  # published from the journal meanwhile
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


@pytest.mark.parametrize(
    ("rule", "status", "event", "problem"),
    [
        ({"method": "GET"}, 429, "secret.read_failed", "rate limited (HTTP 429)"),
        ({"method": "POST", "body": b'"claim"'}, 500, "claim.failed", "server error (HTTP 500)"),
    ],
    ids=["read-429", "claim-500"],
)
def test_vault_trouble_before_the_exchange_delays_it(
    sidecar: Sidecar, rule: dict[str, Any], status: int, event: str, problem: str
) -> None:
    faults = Faults(sidecar.dep.openbao.address)
    faults.arm(
        Reply(status, {"errors": ["injected"]}, headers={"Retry-After": "1"}),
        path=f"/v1/secret/data/{KV_PATH}",
        count=1,
        **rule,
    )
    vault_behind(sidecar, faults)
    started = time.monotonic()
    sidecar.start()
    sidecar.wait_state("valid", timeout=15)
    operation = "read" if rule["method"] == "GET" else "write"
    assert failed(sidecar, event) == [
        ("vault_unavailable", f"vault {operation} {LOCATION}: {problem}")
    ]
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 honoured
    assert sidecar.vault_requests(operation, "vault_unavailable") == 1
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        # Each byte comes quickly; the whole answer would take 20 s against a 1 s timeout.
        (Reply(200, b" " * 200 + b"{}", drip=0.1), "no answer from {address} in 1.0 s"),
        (Reply(200, size=3 << 20), "unexpected response (an answer of more than 1 MiB)"),
    ],
    ids=["dripping", "oversized"],
)
def test_a_read_answer_that_drips_or_swells_is_bounded(
    sidecar: Sidecar, reply: Reply, problem: str
) -> None:
    faults = Faults(sidecar.dep.openbao.address)
    faults.arm(reply, method="GET", path=f"/v1/secret/data/{KV_PATH}", count=1)
    vault_behind(sidecar, faults, timeout_seconds=1)
    sidecar.start()
    sidecar.wait_state("valid", timeout=20)
    address = sidecar.route.url("").rstrip("/")
    [(kind, message)] = failed(sidecar, "secret.read_failed")
    assert kind == "vault_unavailable"
    assert message == f"vault read {LOCATION}: " + problem.format(address=address)
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


def _operator_races_the_exchange(sidecar: Sidecar, expires_in: int) -> tuple[Any, str]:
    """The first exchange: the operator re-seeds Vault while the answer is on its way."""
    issuer = sidecar.issuer(expires_in=expires_in)
    operator_token = "CANARY-OP-" + "o" * 24
    sidecar.scan.secret(operator_token, "the operator's refresh token")
    calls = {"n": 0}

    def exchange_while_operator_writes(request: Recorded) -> Reply:
        reply = issuer(request)
        calls["n"] += 1
        if calls["n"] == 1:
            data, _ = sidecar.vault()
            data.pop("token_sidecar", None)  # `vault kv put` replaces the whole secret
            sidecar.dep.openbao.put_secret(KV_PATH, {**data, "refresh_token": operator_token})
            issuer.current = operator_token  # the operator's new consent is live at the server
        return reply

    sidecar.configure(exchange_while_operator_writes)
    return issuer, operator_token


def test_a_cas_conflict_with_an_operator_adopts_the_operator_token(sidecar: Sidecar) -> None:
    """An operator re-seeds while the exchange is in flight: the result write loses the
    check-and-set, the operator's token wins, and the sidecar continues from it."""
    issuer, operator_token = _operator_races_the_exchange(sidecar, expires_in=4)
    sidecar.start()
    sidecar.wait_state("valid")
    assert sidecar.events("secret.changed_externally")
    presented = [r.form["refresh_token"][0] for r in sidecar.route.requests("/token")]
    assert presented == [sidecar.refresh_token, operator_token]
    data, _ = sidecar.vault()
    assert data["refresh_token"] == issuer.issued_refresh[1]
    assert sidecar.token_json()["access_token"] == issuer.issued_access[1]
    assert issuer.reuse == 0
    assert sidecar.stop() == 0


def test_after_a_lost_cas_the_operator_token_is_used_at_once(sidecar: Sidecar) -> None:
    """With 60 s tokens the sidecar should not wait 40 s, tokenless, to use the new token."""
    _, operator_token = _operator_races_the_exchange(sidecar, expires_in=60)
    sidecar.start()
    sidecar.wait(lambda: sidecar.events("secret.changed_externally"), timeout=10)
    time.sleep(3)
    presented = [r.form["refresh_token"][0] for r in sidecar.route.requests("/token")]
    assert presented == [sidecar.refresh_token, operator_token]
    assert sidecar.health()["state"] == "valid"
