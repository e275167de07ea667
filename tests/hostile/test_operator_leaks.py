"""The canary scan of the operator commands: ``seed``, ``status`` and ``retire`` print no secret.

Vault holds canary values (the refresh token, the client secret); a raw server stands in for
the authorization server and answers with more canaries (the device code, the new access
and refresh tokens), and with error bodies that quote the token or device code back. Every
output of the three commands, in both output modes and at debug log level, is scanned, as are
the failures: a refusal without ``--replace``, and a revocation endpoint that is busy first.
Every command runs with ``--verbose``, so its log lines at debug level are scanned too.
"""

from __future__ import annotations

import json

import pytest

from tests.hostile.harness import Sidecar, canary
from tests.support.rawserver import Recorded, Reply

pytestmark = pytest.mark.integration


def test_operator_commands_print_no_secret(sidecar: Sidecar) -> None:
    device_code = canary("DC")
    access, refresh = canary("SEED-AT"), canary("SEED-RT")
    sidecar.scan.secret(device_code, "the device code")
    sidecar.scan.secret(access, "the seeded access token")
    sidecar.scan.secret(refresh, "the seeded refresh token")
    route = sidecar.route
    route.on(
        "/device",
        Reply(
            200,
            {
                "device_code": device_code,
                "user_code": "WDJB-MJHT",
                "verification_uri": route.url("/verify"),
                "verification_uri_complete": route.url("/verify?user_code=WDJB-MJHT"),
                "expires_in": 60,
                "interval": 0.1,
            },
        ),
    )

    def slow_down_quoting(request: Recorded) -> Reply:
        presented = request.form.get("device_code", [""])[0]
        return Reply(400, {"error": "slow_down", "error_description": f"slow, {presented}"})

    granted = Reply(
        200,
        {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 60,
            "refresh_token": refresh,
        },
    )
    sidecar.configure(slow_down_quoting, granted)
    revocation = ("--revocation-endpoint", route.url("/revoke"))
    endpoints = ("--device-authorization-endpoint", route.url("/device"), *revocation)

    refused = sidecar.cli(
        "seed", "--credential", "billing", *endpoints, "--output", "text", "--verbose"
    )
    assert refused.returncode == 1
    assert "--replace" in refused.stderr
    assert '"event": "vault.login"' in refused.stderr  # the debug log is there to be scanned

    for output in ("json", "text"):
        seeded = sidecar.cli(
            "seed",
            "--credential",
            "billing",
            "--replace",
            *endpoints,
            "--output",
            output,
            "--verbose",
            timeout=60,
        )
        assert seeded.returncode == 0, seeded.stderr
        assert "WDJB-MJHT" in seeded.stdout + seeded.stderr
    data, _ = sidecar.vault()
    assert data["refresh_token"] == refresh

    for output in ("json", "text"):
        status = sidecar.cli("status", "--output", output, "--verbose")
        assert status.returncode == 0
        assert "billing" in status.stdout

    def busy_quoting(request: Recorded) -> Reply:
        presented = request.form.get("token", [""])[0]
        return Reply(
            503,
            {"error": "temporarily_unavailable", "error_description": f"busy with {presented}"},
            headers={"Retry-After": "0"},
        )

    route.on("/revoke", busy_quoting, Reply(200, b""))
    retired = sidecar.cli(
        "retire", "--credential", "billing", *revocation, "--output", "json", "--verbose"
    )
    assert retired.returncode == 0, retired.stderr
    events = [json.loads(line)["event"] for line in retired.stdout.splitlines()]
    assert "revocation.retry" in events
    assert events[-1] == "retired"
    again = sidecar.cli(
        "retire", "--credential", "billing", *revocation, "--output", "text", "--verbose"
    )
    assert again.returncode == 0
    after = sidecar.cli("status", "--output", "text", "--verbose")
    assert after.returncode == 1
    # The requests the raw server received carried the secrets, as they must.
    assert route.requests("/revoke")[0].form["token"] == [refresh]
