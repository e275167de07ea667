"""Hostile token endpoints against the whole program: a real sidecar process, real OpenBao.

The raw server (:mod:`tests.support.rawserver`) answers what no real authorization server
sends on demand; the real oidc-provider, behind the raw server as a fault-injecting proxy,
provides real rotation where a case is about not losing a rotated token. Each case asserts
the error class (its ``kind`` in logs, ``/healthz`` and metrics) and exact message, what the
token files hold, and what Vault holds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from datetime import datetime
from email.utils import formatdate
from typing import Any

import pytest

from tests.hostile.harness import Sidecar, assert_chain_intact, seed_the_idp_grant
from tests.support.rawserver import Recorded, Reply, forward

pytestmark = pytest.mark.integration

MALFORMED = "token endpoint response (HTTP 200) is not a JSON object"


def grant_body(access_token: str = "CANARY-AT-0-xxxxxxxxxxxxxxxx", **fields: Any) -> dict[str, Any]:
    return {"access_token": access_token, "token_type": "Bearer", "expires_in": 60, **fields}


def failures(sidecar: Sidecar) -> list[tuple[str, str, str]]:
    """(event, error kind, message) of every failed refresh, in order."""
    return [
        (e["event"], e["error"], e["message"])
        for e in sidecar.events()
        if e.get("event") in ("token.refresh_failed", "token.rejected")
    ]


def test_a_gauntlet_of_broken_answers_then_a_good_one(sidecar: Sidecar) -> None:
    """One sidecar meets every kind of broken answer in turn, then a valid one.

    Each is classified and reported with its own message, the refresh token is never lost
    (the server rotates only at the end, and Vault holds that rotation), nothing follows a
    redirect, and the sidecar is ready exactly when the good answer has been published.
    """
    canary_rt = sidecar.refresh_token
    elsewhere = sidecar.route.url("/elsewhere")
    cases: list[tuple[Reply, str, str, str]] = [
        # 2xx that is not an RFC 6749 §5.1 answer: MalformedResponse, retried with backoff
        (Reply(200, b"<html>portal</html>", content_type="text/html"), "malformed", MALFORMED, ""),
        (Reply(200, b""), "malformed", MALFORMED, ""),
        (Reply(200, b'{"access_token": "CANARY-AT-cut", "token_ty'), "malformed", MALFORMED, ""),
        (Reply(200, b"\xff\xfe not even utf-8"), "malformed", MALFORMED, ""),
        (Reply(200, b'["access_token"]'), "malformed", MALFORMED, ""),
        (Reply(204), "malformed", MALFORMED.replace("200", "204"), ""),
        (
            Reply(200, {"access_token": "CANARY-AT-x", "expires_in": 60}),
            "malformed",
            "token endpoint response: token_type is missing or not a string",
            "",
        ),
        (
            Reply(200, {"access_token": "CANARY-AT-x", "token_type": 42}),
            "malformed",
            "token endpoint response: token_type is missing or not a string",
            "",
        ),
        (
            Reply(200, {"token_type": "Bearer", "expires_in": 60}),
            "malformed",
            "token endpoint response: access_token is missing or not a non-empty string",
            "",
        ),
        (
            Reply(200, grant_body("CANARY-AT\r\nX-Injected: 1")),
            "malformed",
            "token endpoint response: access_token has characters outside RFC 6749 VSCHAR",
            "",
        ),
        (
            Reply(200, grant_body(expires_in="soon")),
            "malformed",
            "token endpoint response: expires_in is not a number",
            "",
        ),
        (
            Reply(200, size=3 * 1024 * 1024),
            "malformed",
            "token endpoint: response larger than 1048576 bytes",
            "",
        ),
        (
            Reply(200, size=3 * 1024 * 1024, declare_length=False),
            "malformed",
            "token endpoint: response larger than 1048576 bytes",
            "",
        ),
        # RFC 6749 §5.2 error codes other than invalid_grant: final for the client
        *(
            (
                Reply(status, {"error": code, "error_description": f"bad {canary_rt}"}),
                "client_rejected",
                f"token endpoint rejected the request ({code}, HTTP {status})",
                "",
            )
            for code, status in [
                ("invalid_request", 400),
                ("invalid_client", 401),
                ("unauthorized_client", 400),
                ("unsupported_grant_type", 400),
                ("invalid_scope", 400),
                ("access_denied", 403),
            ]
        ),
        # malformed error bodies: classified by status, the body never echoed
        *(
            (
                Reply(400, body, content_type=None),
                "client_rejected",
                f"token endpoint rejected the request (HTTP 400, {detail})",
                "",
            )
            for body, detail in [
                (b"", "no OAuth error code"),
                (b"<html>Bad Request</html>", "no OAuth error code"),
                (b'{"error": 42}', "no OAuth error code"),
                (b'{"error": null, "error_description": "x"}', "no OAuth error code"),
                (f'{{"error": "{canary_rt}"}}'.encode(), "an unrecognised error code"),
                (b'{"error": "invalid_request', "no OAuth error code"),
            ]
        ),
        (
            Reply(418, b"I'm a teapot", content_type="text/plain"),
            "client_rejected",
            "token endpoint rejected the request (HTTP 418, no OAuth error code)",
            "",
        ),
        # transient codes and statuses: retried with backoff, whatever the body claims
        (
            Reply(400, {"error": "temporarily_unavailable"}),
            "endpoint_unavailable",
            "token endpoint unavailable (temporarily_unavailable, HTTP 400)",
            "",
        ),
        (
            Reply(400, {"error": "server_error"}),
            "endpoint_unavailable",
            "token endpoint unavailable (server_error, HTTP 400)",
            "",
        ),
        (
            Reply(500, b"<html>oops</html>", content_type="text/html"),
            "endpoint_unavailable",
            "token endpoint unavailable (HTTP 500)",
            "",
        ),
        (
            Reply(503, {"error": "invalid_grant"}),
            "endpoint_unavailable",
            "token endpoint unavailable (invalid_grant, HTTP 503)",
            "",
        ),
        # redirects are final and never followed (the request carries the credentials)
        *(
            (
                Reply(status, b"", headers={"Location": elsewhere}),
                "client_rejected",
                f"token endpoint answered HTTP {status}, a redirect; redirects are not "
                "followed, so configure the final token endpoint URL",
                "",
            )
            for status in (301, 302, 303, 307, 308)
        ),
    ]
    issuer = sidecar.issuer()
    sidecar.route.on("/elsewhere", issuer)
    sidecar.configure(
        *(reply for reply, *_ in cases),
        issuer,
        refresh={"secret_poll_seconds": 0.1, "backoff_max_seconds": 0.1},
    )
    sidecar.start()
    sidecar.wait_state("valid", timeout=60)

    seen = failures(sidecar)
    expected = [
        ("token.refresh_failed", kind.replace("malformed", "malformed_response"), message)
        for _, kind, message, _ in cases
    ]
    assert seen == expected
    assert sidecar.route.requests("/elsewhere") == []
    # Every attempt presented the seeded token; only the last answer rotated it.
    presented = {r.form["refresh_token"][0] for r in sidecar.route.requests("/token")}
    assert presented == {canary_rt}
    assert len(sidecar.route.requests("/token")) == len(cases) + 1
    data, _ = sidecar.vault()
    assert data["refresh_token"] == issuer.issued_refresh[0]
    assert data["owner"] == "team-billing"
    assert sidecar.token_json()["access_token"] == issuer.issued_access[0]
    assert (sidecar.dep.output_dir / "access_token").read_text() == issuer.issued_access[0]

    health = sidecar.health()
    assert health["last_error"] is None
    assert health["consecutive_failures"] == 0
    assert sidecar.get("/readyz").status_code == 200
    counts = {
        kind: sum(1 for _, k, _, _ in cases if k == kind)
        for kind in ("malformed", "client_rejected", "endpoint_unavailable")
    }
    assert sidecar.refreshes("malformed_response") == counts["malformed"]
    assert sidecar.refreshes("client_rejected") == counts["client_rejected"]
    assert sidecar.refreshes("endpoint_unavailable") == counts["endpoint_unavailable"]
    assert sidecar.refreshes("success") == 1
    assert sidecar.stop() == 0


class Mangle:
    """A proxy to the real oidc-provider whose first ``count`` good answers are changed.

    ``change`` gets the real answer's JSON (the server has rotated: its ``refresh_token`` is
    the only live one) and returns what the sidecar gets instead.
    """

    def __init__(self, sidecar: Sidecar, change: Any, count: int = 1) -> None:
        self._forward = forward(sidecar.dep.idp.issuer)
        self._change = change
        self.count = count
        self.rotated: list[str] = []

    def __call__(self, request: Recorded) -> Reply:
        answer = self._forward(Recorded(request.method, "/token", request.headers, request.body))
        if self.count <= 0 or answer.status != 200:
            return answer
        self.count -= 1
        data = json.loads(answer.payload())
        self.rotated.append(data["refresh_token"])
        result: Reply = self._change(data)
        return result


def test_missing_access_token_with_a_rotated_refresh_token_keeps_the_refresh_token(
    sidecar: Sidecar,
) -> None:
    """The server rotated but sent no access token: Vault gets the new refresh token, the
    answer is refused, and the next refresh presents the new token (no reuse, no revocation)."""
    seed_the_idp_grant(sidecar)
    mangle = Mangle(sidecar, lambda data: Reply(200, {**data, "access_token": None}))
    sidecar.configure(mangle)
    sidecar.start()
    sidecar.wait_state("valid", timeout=15)
    assert failures(sidecar)[0] == (
        "token.refresh_failed",
        "malformed_response",
        "token endpoint response: access_token is missing or not a non-empty string",
    )
    presented = [r.form["refresh_token"][0] for r in sidecar.route.requests("/token")]
    assert presented[:2] == [sidecar.dep.seeded, mangle.rotated[0]]
    assert sidecar.events("writeback.succeeded"), "the salvaged token was written to Vault"
    assert sidecar.refreshes("malformed_response") == 1
    assert sidecar.refreshes("success") >= 1
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


def test_an_answer_cut_off_after_the_rotated_refresh_token_keeps_it(sidecar: Sidecar) -> None:
    """The connection drops mid-body, after a complete new ``refresh_token``: retrying the
    spent token would make the server revoke the grant, so the new token is kept instead."""
    seed_the_idp_grant(sidecar)

    def cut(data: dict[str, Any]) -> Reply:
        body = json.dumps({"refresh_token": data["refresh_token"], **data}).encode()
        end = body.index(data["refresh_token"].encode()) + len(data["refresh_token"]) + 1
        return Reply(200, body, cut_after=end + 3)

    sidecar.configure(Mangle(sidecar, cut))
    sidecar.start()
    sidecar.wait_state("valid", timeout=15)
    kinds = [kind for _, kind, _ in failures(sidecar)]
    assert kinds == ["malformed_response"]
    assert failures(sidecar)[0][2].startswith("token endpoint 127.0.0.1:")
    assert "cut off" in failures(sidecar)[0][2]
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


def test_a_refresh_token_identical_to_the_old_one_is_kept(sidecar: Sidecar) -> None:
    """A server that does not rotate returns the same refresh token: nothing to write back."""

    def same(request: Recorded) -> Reply:
        return Reply(200, grant_body(refresh_token=request.form["refresh_token"][0]))

    sidecar.configure(same)
    _, seeded_version = sidecar.vault()
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    data, version = sidecar.vault()
    assert data["refresh_token"] == sidecar.refresh_token
    assert version == seeded_version + 2  # the claim, then the result (shared access token)
    assert sidecar.token_json()["access_token"] == "CANARY-AT-0-xxxxxxxxxxxxxxxx"


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (..., 300),  # absent: refresh.default_expires_in
        (None, 300),
        # zero or negative: an already-expired answer, never published (test_expired_answers)
        (90.5, 90.5),
        ("120", 120),
        (" 45 ", 45),
        (1e12, 86_400),  # astronomically large: refresh.max_expires_in
        (10**30, 86_400),
    ],
    ids=["absent", "null", "fractional", "string", "padded", "huge", "bigint"],
)
def test_expires_in_is_clamped_into_the_published_expiry(
    sidecar: Sidecar, expires_in: Any, lifetime: float
) -> None:
    issuer = sidecar.issuer(expires_in=expires_in)
    if expires_in is ...:
        issuer.shape = lambda body: {k: v for k, v in body.items() if k != "expires_in"}
    sidecar.configure(issuer)
    before = time.time()
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    document = sidecar.token_json()
    issued = _epoch(document["issued_at"])
    expires = _epoch(document["expires_at"])
    assert before - 1 <= issued <= time.time()
    # RFC 3339 stamps have whole seconds, each rounded down.
    assert abs((expires - issued) - lifetime) <= 1
    data, _ = sidecar.vault()
    assert data["refresh_token"] == issuer.issued_refresh[0]


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_slow_drip_is_bounded_by_the_overall_timeout(sidecar: Sidecar) -> None:
    """One byte every half second never trips a per-read timeout; the overall deadline does.

    The request may have reached the server, so it is retried once (R1) and then treated as
    possibly spent: reported, and not presented again until Vault holds another token.
    """
    body, drip = grant_body(), 0.4
    sidecar.configure(
        Reply(200, body, drip=drip, drip_bytes=1),
        sections={"http": {"timeout_seconds": 1}},
        refresh={"secret_poll_seconds": 0.5},
    )
    started = time.monotonic()
    sidecar.start()
    # Two attempts of one second each, plus start-up and the retry's backoff; without the
    # overall deadline a single attempt would take the whole drip (about 35 s). Half of that
    # bounds it with room for a loaded machine.
    whole_drip = len(json.dumps(body)) * drip
    health = sidecar.wait_state("rejected", timeout=whole_drip / 2)
    assert time.monotonic() - started < whole_drip / 2
    assert health["last_error"] == "response_lost_twice"
    assert failures(sidecar) == [
        (
            "token.refresh_failed",
            "response_lost_twice",
            "the token endpoint's answer was lost twice; the refresh token may be spent and "
            "will not be presented again until Vault holds a new one",
        )
    ]
    time.sleep(2)  # four secret polls: the possibly spent token is not presented again
    assert len(sidecar.route.requests("/token")) == 2
    assert sidecar.refreshes("response_lost_twice") == 1
    assert not (sidecar.dep.output_dir / "access_token").exists()
    assert sidecar.get("/readyz").status_code == 503
    data, _ = sidecar.vault()
    assert data["refresh_token"] == sidecar.refresh_token
    assert (
        data["token_sidecar"]["rejected"]
        == hashlib.sha256(sidecar.refresh_token.encode()).hexdigest()
    )
    assert sidecar.stop() == 0


def test_retry_after_as_seconds_date_and_garbage(sidecar: Sidecar) -> None:
    def in_three_seconds(request: Recorded) -> Reply:
        return Reply(
            429,
            {"error": "slow_down"},
            headers={"Retry-After": formatdate(time.time() + 3, usegmt=True)},
        )

    issuer = sidecar.issuer()
    sidecar.configure(
        Reply(503, {"error": "temporarily_unavailable"}, headers={"Retry-After": "2"}),
        in_three_seconds,
        Reply(503, b"", headers={"Retry-After": "soon, maybe"}),
        Reply(503, b"", headers={"Retry-After": "999999"}),
        issuer,
        refresh={"max_retry_after_seconds": 2},
    )
    sidecar.start()
    sidecar.wait(lambda: len(sidecar.route.requests("/token")) >= 2, timeout=10)
    health = sidecar.health()
    assert health["state"] == "starting"
    assert health["last_error"] == "endpoint_unavailable"
    readyz = sidecar.get("/readyz")
    assert readyz.status_code == 503
    assert "billing: phase=starting, no token published yet, last_error=endpoint_unavailable" in (
        readyz.text
    )
    sidecar.wait_state("valid", timeout=20)
    times = [r.at for r in sidecar.route.requests("/token")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 4
    assert gaps[0] >= 2.0  # delta-seconds
    assert gaps[1] >= 1.9  # an HTTP date three seconds ahead, in whole seconds (so 2-3 s)
    assert gaps[2] < 1.0  # garbage: ordinary backoff (at most 0.5 s here)
    assert 2.0 <= gaps[3] < 3.0  # capped by refresh.max_retry_after_seconds
    assert sidecar.refreshes("endpoint_unavailable") == 4
    assert sidecar.stop() == 0


@pytest.mark.parametrize(
    ("sent", "published"),
    [("bearer", "Bearer"), (" DPOP ", "DPoP"), ("N_A", "N_A"), ("mac", "mac")],
)
def test_token_type_is_normalised_or_kept_as_sent(
    sidecar: Sidecar, sent: str, published: str
) -> None:
    """Known types get their canonical spelling; an unknown one is published as the server
    sent it, so that ``token.json`` tells the app what it holds."""
    issuer = sidecar.issuer(shape=lambda body: {**body, "token_type": sent})
    sidecar.configure(issuer)
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    assert sidecar.token_json()["token_type"] == published


def test_invalid_grant_is_final_for_that_token_until_a_reseed(sidecar: Sidecar) -> None:
    issuer = sidecar.issuer()
    sidecar.configure(
        Reply(400, {"error": "invalid_grant", "error_description": "grant revoked"}),
        issuer,
        refresh={"secret_poll_seconds": 0.3},
    )
    sidecar.start()
    health = sidecar.wait_state("rejected")
    assert health["last_error"] == "invalid_grant"
    assert failures(sidecar) == [
        (
            "token.rejected",
            "invalid_grant",
            "token endpoint refused the refresh token (invalid_grant, HTTP 400)",
        )
    ]
    time.sleep(1.5)  # five secret polls: the refused token is not presented again
    assert len(sidecar.route.requests("/token")) == 1
    assert sidecar.refreshes("invalid_grant") == 1
    assert sidecar.metric("token_sidecar_state", state="rejected") == 1
    data, _ = sidecar.vault()
    assert data["refresh_token"] == sidecar.refresh_token
    fingerprint = hashlib.sha256(sidecar.refresh_token.encode()).hexdigest()
    assert data["token_sidecar"]["rejected"] == fingerprint

    reseeded = "CANARY-RESEED-" + "r" * 20
    sidecar.scan.secret(reseeded, "the re-seeded refresh token")
    issuer.current = reseeded
    sidecar.seed(refresh_token=reseeded)  # `vault kv put` by an operator
    sidecar.wait_state("valid")
    assert sidecar.token_json()["access_token"] == issuer.issued_access[0]
    assert sidecar.stop() == 0


def test_a_slow_drip_that_already_carried_the_rotated_token_keeps_it(sidecar: Sidecar) -> None:
    """The overall deadline strikes mid-body, after the new ``refresh_token`` arrived: it is
    kept (the server rotated), instead of the spent token being retried and the grant lost."""
    seed_the_idp_grant(sidecar)

    def drip(data: dict[str, Any]) -> Reply:
        body = json.dumps({"refresh_token": data["refresh_token"], **data}).encode()
        return Reply(200, body + b" " * 4096, drip=0.25, drip_bytes=64)

    sidecar.configure(Mangle(sidecar, drip), sections={"http": {"timeout_seconds": 1}})
    sidecar.start()
    sidecar.wait_state("valid", timeout=15)
    [(event, kind, message)] = failures(sidecar)
    assert (event, kind) == ("token.refresh_failed", "malformed_response")
    assert "was cut off after" in message
    assert "(TimeoutError)" in message
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)
