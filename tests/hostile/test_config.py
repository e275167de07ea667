"""Configuration mistakes: one message per problem, naming its key, all reported at once.

``check`` (and every other command) exits 2 before touching anything, with one line per
problem; values are never echoed, since a misplaced secret could be among them. Fast: no
server is needed for any of this.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.configload import load_settings
from sidecar.errors import ConfigError
from tests.hostile.canary import CanaryScan

PASSWORD = "CANARY-PASSWORD-0123456789abcdef"
MINIMAL: dict[str, Any] = {
    "vault": {"address": "https://vault.example", "auth": {"method": "token"}},
    "credentials": [
        {
            "name": "billing",
            "kv_path": "apps/billing",
            "token_endpoint": "https://idp.example/token",
            "output_dir": "/run/tokens/billing",
        }
    ],
}

EVERYTHING_WRONG: dict[str, Any] = {
    "surprise": 1,
    "vault": {
        "address": "ftp://vault.example",
        "namespace": [],
        "ca_cert": 5,
        "allow_insecure_http": "maybe",
        "timeout_seconds": 301,
        "colour": "blue",
        "auth": {"method": "approle", "mount": 7, "jwt_file": []},
    },
    "credentials": [
        {
            "name": "Bad_Name",
            "kv_mount": "/",
            "kv_path": "",
            "token_endpoint": f"https://user:{PASSWORD}@idp.example/token",
            "issuer": "https://idp.example",
            "client_auth": "client_secret_jwt",
            "private_key_file": {},
            "signing_alg": "HS256",
            "resource": "https://api.example",
            "file_mode": "0777",
            "file_group": "wheel",
            "required": "perhaps",
            "allow_insecure_http": "sometimes",
            "extra_field": PASSWORD,
            "client_id": [1],
            "key_id": {},
            "scope": 5,
            "audience": [],
        },
        {"name": "billing", "kv_path": "apps/billing", "output_dir": "/run/tokens/billing"},
        {
            "name": "billing",
            "kv_path": "apps/billing2",
            "token_endpoint": "https://idp.example/token",
            "output_dir": "/run/tokens/billing/../billing",
            "file_mode": "rw-r--r--",
            "file_group": -1,
        },
    ],
    "server": {"address": "nope"},
    "log": {"level": "verbose", "format": "xml"},
    "refresh": {
        "fraction": 0.05,
        "jitter": 0.5,
        "min_margin_seconds": -1,
        "min_interval_seconds": 0,
        "default_expires_in": 0,
        "min_expires_in": 100,
        "max_expires_in": 10,
        "backoff_initial_seconds": 10,
        "backoff_max_seconds": 1,
        "max_retry_after_seconds": 0,
        "secret_poll_seconds": PASSWORD,
        "ready_margin_seconds": -5,
        "shutdown_grace_seconds": -1,
    },
    "http": {"ca_cert": [], "timeout_seconds": 0, "max_response_bytes": 10},
    "journal": {"dir": 5},
    "coordination": {"holder": "", "claim_seconds": 4, "clock_skew_seconds": -1, "poll_seconds": 0},
    "events": {"enabled": "sometimes", "dedupe_seconds": -1, "queue_size": 0},
}

NUMBER = "Input should be a valid number, unable to parse string as a number"
PATH = "Input is not a valid path for <class 'pathlib.Path'>"
BOOLEAN = "Input should be a valid boolean, unable to interpret input"
PLAIN_HTTP = "plain http to a non-loopback host (use https, or set allow_insecure_http: true)"

EXPECTED = [
    "vault.namespace: Input should be a valid string",
    f"vault.ca_cert: {PATH}",
    f"vault.allow_insecure_http: {BOOLEAN}",
    "vault.timeout_seconds: Input should be less than or equal to 300",
    "vault.auth.mount: Input should be a valid string",
    f"vault.auth.jwt_file: {PATH}",
    "vault.colour: unknown key",
    "credentials[0].name: must be 1-63 of a-z, 0-9 and '-', starting and ending alphanumeric",
    "credentials[0].kv_mount: must not be empty",
    "credentials[0].kv_path: String should have at least 1 character",
    "credentials[0].client_auth: Input should be 'client_secret_basic', 'client_secret_post', "
    "'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth' or 'none'",
    f"credentials[0].private_key_file: {PATH}",
    "credentials[0].signing_alg: Input should be 'RS256', 'RS384', 'RS512', 'PS256', 'ES256', "
    "'ES384' or 'EdDSA'",
    "credentials[0].resource: Input should be a valid list",
    "credentials[0].output_dir: required key is missing",
    "credentials[0].file_mode: must not be world-writable",
    "credentials[0].file_group: Input should be a valid integer, unable to parse string as an "
    "integer",
    f"credentials[0].required: {BOOLEAN}",
    f"credentials[0].allow_insecure_http: {BOOLEAN}",
    "credentials[0].extra_field: unknown key",
    "credentials[0].client_id: Input should be a valid string",
    "credentials[0].key_id: Input should be a valid string",
    "credentials[0].scope: Input should be a valid string",
    "credentials[0].audience: Input should be a valid string",
    "credentials[1].token_endpoint: set exactly one of token_endpoint and issuer",
    "credentials[2].file_mode: must be an octal mode such as '0440'",
    "credentials[2].file_group: Input should be greater than or equal to 0",
    "server.address: must be HOST:PORT, for example 0.0.0.0:8099",
    "log.level: Input should be 'debug', 'info', 'warning' or 'error'",
    "log.format: Input should be 'json' or 'console'",
    "refresh.fraction: Input should be greater than 0.1",
    "refresh.jitter: Input should be less than or equal to 0.2",
    "refresh.min_margin_seconds: Input should be greater than or equal to 0",
    "refresh.min_interval_seconds: Input should be greater than or equal to 0.1",
    "refresh.default_expires_in: Input should be greater than 0",
    "refresh.max_retry_after_seconds: Input should be greater than 0",
    f"refresh.secret_poll_seconds: {NUMBER}",
    "refresh.ready_margin_seconds: Input should be greater than or equal to 0",
    "refresh.shutdown_grace_seconds: Input should be greater than or equal to 0",
    f"http.ca_cert: {PATH}",
    "http.timeout_seconds: Input should be greater than 0",
    "http.max_response_bytes: Input should be greater than or equal to 1024",
    f"journal.dir: {PATH}",
    "coordination.holder: String should have at least 1 character",
    "coordination.claim_seconds: Input should be greater than or equal to 5",
    "coordination.clock_skew_seconds: Input should be greater than or equal to 0",
    "coordination.poll_seconds: Input should be greater than or equal to 0.1",
    f"events.enabled: {BOOLEAN}",
    "events.dedupe_seconds: Input should be greater than or equal to 0",
    "events.queue_size: Input should be greater than or equal to 1",
    "surprise: unknown key",
    # the contradictions, found even though the keys around them are wrong too
    "vault.address: must be an absolute https:// URL",
    "vault.auth.role_id_file: role_id_file and secret_id_file are required for 'approle'",
    "credentials[0].token_endpoint: set exactly one of token_endpoint and issuer",
    "credentials[0].token_endpoint: must not carry credentials in the URL",
    "credentials[2].name: duplicate name 'billing'",
    "credentials[2].output_dir: already used by credential 'billing'",
    "refresh.min_expires_in: must not exceed max_expires_in",
    "refresh.backoff_initial_seconds: must not exceed backoff_max_seconds",
]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TOKEN_SIDECAR_", "VAULT_"))}


def test_check_reports_every_problem_at_once(tmp_path: Path, leaks: CanaryScan) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(EVERYTHING_WRONG))
    leaks.secret(PASSWORD, "a password in the configuration")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(config), "check"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=False,
    )
    leaks.text("check stdout", result.stdout)
    leaks.text("check stderr", result.stderr)
    assert result.returncode == 2
    assert result.stdout == ""
    # One line per problem (in the order of the keys in the model, then the contradictions).
    assert sorted(result.stderr.splitlines()) == sorted(f"config error: {p}" for p in EXPECTED)


def problems(data: Any) -> list[str]:
    """What ``load_settings`` says about ``data`` (a mapping, or YAML text)."""
    handle, name = tempfile.mkstemp(suffix=".yaml")
    os.close(handle)
    path = Path(name)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    try:
        load_settings(path)
    except ConfigError as exc:
        return exc.problems
    finally:
        path.unlink()
    return []


def with_credential(**changes: Any) -> dict[str, Any]:
    credential = {**MINIMAL["credentials"][0], **changes}
    return {**MINIMAL, "credentials": [{k: v for k, v in credential.items() if v is not ...}]}


def with_section(section: str, **changes: Any) -> dict[str, Any]:
    return {**MINIMAL, section: {**MINIMAL.get(section, {}), **changes}}


def test_the_minimal_configuration_is_valid() -> None:
    assert problems(MINIMAL) == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (with_credential(token_endpoint=..., issuer=...), ["set exactly one of"]),
        (with_credential(file_group=4_294_967_295), ["less than or equal to 4294967294"]),
        (with_credential(file_mode=0o1000), ["must be between 0000 and 0777"]),
        (with_credential(name="x" * 64), ["must be 1-63 of a-z"]),
        (with_credential(name="-x"), ["must be 1-63 of a-z"]),
        (with_credential(kv_path="///"), ["kv_path: must not be empty"]),
        (with_credential(issuer="http://idp.example", token_endpoint=...), [PLAIN_HTTP]),
        (with_credential(resource=["a", 5]), ["resource[1]: Input should be a valid string"]),
        (
            with_section("refresh", min_expires_in=400, max_expires_in=500),
            ["refresh.default_expires_in: must be between min_expires_in and max_expires_in"],
        ),
        (
            with_section("http", timeout_seconds=40),
            ["coordination.claim_seconds: must be longer than http.timeout_seconds"],
        ),
        (
            {**MINIMAL, "credentials": []},
            ["credentials: List should have at least 1 item after validation, not 0"],
        ),
        ({"vault": MINIMAL["vault"]}, ["credentials: required key is missing"]),
        (with_section("vault", auth={"method": "kubernetes"}), ["vault.auth.role: required"]),
        (with_section("vault", auth={"method": "ldap"}), ["vault.auth.method: Input should be"]),
        (with_section("vault", auth={"method": "token", "secret": PASSWORD}), ["unknown key"]),
        (with_section("server", address="0.0.0.0:70000"), ["server.address: must be HOST:PORT"]),
        (with_section("http", max_response_bytes="1MB"), ["valid integer"]),
        (
            {**MINIMAL, "vault": {"address": "https://vault.example"}, "log": {"level": 5}},
            ["log.level: Input should be 'debug', 'info', 'warning' or 'error'"],
        ),
        ("- a list\n", ["the top level must be a mapping"]),
        ("vault: [\n", ["not valid YAML at line 2, column 1"]),
        ("1.5: x\nnull: y\n", ["1.5: unknown key (keys are strings)", "None: unknown key"]),
    ],
)
def test_each_problem_names_its_key(config: Any, expected: list[str]) -> None:
    found = problems(config)
    assert len(found) == len(expected), found
    for message, fragment in zip(found, expected, strict=True):
        assert fragment in message
    assert not any(PASSWORD in message for message in found)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "TOKEN_SIDECAR_REFRESH__FRACTION",
            "abc",
            f"refresh.fraction: {NUMBER}",
        ),
        (
            "TOKEN_SIDECAR_CREDENTIALS",
            '[{"name": "' + PASSWORD,
            "TOKEN_SIDECAR_CREDENTIALS: not valid JSON for this key (the value is not shown)",
        ),
        ("VAULT_ADDR", "ftp://vault.example", "vault.address: must be an absolute https:// URL"),
        (
            "TOKEN_SIDECAR_COORDINATION__CLAIM_SECONDS",
            "5",
            "coordination.claim_seconds: must be longer than http.timeout_seconds, or no "
            "exchange could ever start",
        ),
    ],
)
def test_environment_overrides_are_checked_the_same_way(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    for name in list(os.environ):
        if name.startswith(("TOKEN_SIDECAR_", "VAULT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    assert problems(MINIMAL) == [expected]
