"""Every bad annotation denies admission with a message naming the annotation."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.injector.annotations import CREDENTIAL_KEYS, POD_KEYS, parse
from tests.injector.support import pod_review, run

GOOD = {
    "token-sidecar.io/inject": "true",
    "token-sidecar.io/credential-billing": "apps/billing/oauth",
    "token-sidecar.io/token-endpoint-billing": "https://idp.example/token",
}
P = "token-sidecar.io/"

CASES: list[tuple[dict[str, Any], str, str]] = [
    # (annotations changed or added, the annotation named, words of the message)
    ({f"{P}injct": "true"}, f"{P}injct", "unknown annotation"),
    ({f"{P}credential-Billing": "apps/x"}, f"{P}credential-Billing", "credential name"),
    ({f"{P}credential-bad_name": "apps/x"}, f"{P}credential-bad_name", "credential name"),
    ({f"{P}credential--x": "apps/x"}, f"{P}credential--x", "credential name"),
    ({f"{P}inject": "yes"}, f"{P}inject", '"true" or "false"'),
    ({f"{P}status": "done"}, f"{P}status", "injected"),
    ({f"{P}auth-method": "approle"}, f"{P}auth-method", "kubernetes or jwt"),
    ({f"{P}role": "bad role!"}, f"{P}role", "Vault name"),
    ({f"{P}auth-mount": "/"}, f"{P}auth-mount", "Vault name"),
    ({f"{P}vault-address": "ftp://vault.example"}, f"{P}vault-address", "https://"),
    ({f"{P}vault-address": "http://vault.example:8200"}, f"{P}vault-address", "plain http"),
    ({f"{P}containers": " , "}, f"{P}containers", "comma-separated"),
    ({f"{P}containers": "App"}, f"{P}containers", "comma-separated"),
    ({f"{P}containers": "app,ghost"}, f"{P}containers", "no container named 'ghost'"),
    ({f"{P}cpu-request": "lots"}, f"{P}cpu-request", "quantity"),
    ({f"{P}memory-limit": "-1Mi"}, f"{P}memory-limit", "quantity"),
    ({f"{P}memory-request": "0"}, f"{P}memory-request", "positive"),
    ({f"{P}cpu-request": "2", f"{P}cpu-limit": "1"}, f"{P}cpu-request", "exceed"),
    ({f"{P}cpu-request": "2"}, f"{P}cpu-request", "exceed the limit (500m)"),
    ({f"{P}credential-billing": "apps//x"}, f"{P}credential-billing", "KV path"),
    ({f"{P}credential-billing": "apps/../x"}, f"{P}credential-billing", "'..'"),
    ({f"{P}credential-billing": "apps/x y"}, f"{P}credential-billing", "KV path"),
    ({f"{P}credential-billing": "/"}, f"{P}credential-billing", "KV path"),
    ({f"{P}kv-mount-billing": "a b"}, f"{P}kv-mount-billing", "KV path"),
    ({f"{P}token-endpoint-billing": "not a url"}, f"{P}token-endpoint-billing", "https://"),
    (
        {f"{P}token-endpoint-billing": "http://idp.example/token"},
        f"{P}token-endpoint-billing",
        "plain http",
    ),
    ({f"{P}issuer-billing": "https://idp.example"}, f"{P}issuer-billing", "not both"),
    ({f"{P}token-endpoint-billing": None}, f"{P}token-endpoint-billing", "issuer-billing"),
    ({f"{P}client-auth-billing": "basic"}, f"{P}client-auth-billing", "client_secret_basic"),
    ({f"{P}grant-billing": "password"}, f"{P}grant-billing", "client_credentials"),
    (
        {f"{P}grant-billing": "client_credentials", f"{P}client-auth-billing": "none"},
        f"{P}client-auth-billing",
        "needs client authentication",
    ),
    ({f"{P}required-billing": "yes"}, f"{P}required-billing", '"true" or "false"'),
    ({f"{P}allow-insecure-http-billing": "1"}, f"{P}allow-insecure-http-billing", '"true"'),
    ({f"{P}file-mode-billing": "999"}, f"{P}file-mode-billing", "octal"),
    ({f"{P}file-mode-billing": "0666"}, f"{P}file-mode-billing", "world-writable"),
    ({f"{P}file-group-billing": "staff"}, f"{P}file-group-billing", "numeric"),
    ({f"{P}scope-billing": " "}, f"{P}scope-billing", "non-empty"),
    ({f"{P}scope-billing": "a\nb"}, f"{P}scope-billing", "single line"),
    ({f"{P}resource-billing": " , "}, f"{P}resource-billing", "at least one"),
    ({f"{P}scope-reports": "x"}, f"{P}scope-reports", "credential-reports"),
    ({f"{P}audience-billing": 42}, f"{P}audience-billing", "must be a string"),
    (
        {f"{P}credential-billing": None, f"{P}token-endpoint-billing": None},
        f"{P}inject",
        "no credential",
    ),
]


@pytest.mark.parametrize(("change", "named", "words"), CASES, ids=[f"{n}:{w}" for _, n, w in CASES])
def test_bad_annotation_denies_naming_it(change: dict[str, Any], named: str, words: str) -> None:
    annotations = {**GOOD, **change}
    annotations = {k: v for k, v in annotations.items() if v is not None}
    outcome = run(pod_review(annotations))
    assert outcome.decision == "denied", outcome
    response = outcome.response["response"]
    assert response["allowed"] is False
    assert "patch" not in response
    assert response["status"]["code"] == 400
    message = response["status"]["message"]
    assert f"annotation {named}:" in message, message
    assert words in message, message


def test_every_problem_is_reported_at_once() -> None:
    annotations = {
        **GOOD,
        f"{P}injct": "true",
        f"{P}scope-billing": "",
        f"{P}cpu-limit": "x",
    }
    message = run(pod_review(annotations)).response["response"]["status"]["message"]
    for named in (f"{P}injct", f"{P}scope-billing", f"{P}cpu-limit"):
        assert f"annotation {named}:" in message


@pytest.mark.parametrize(
    ("spec_change", "words"),
    [
        ({"volumes": [{"name": "token-sidecar-tokens", "emptyDir": {}}]}, "volume named"),
        (
            {"initContainers": [{"name": "token-sidecar", "image": "x"}]},
            "container named 'token-sidecar'",
        ),
    ],
)
def test_pod_conflicts_deny(spec_change: dict[str, Any], words: str) -> None:
    body = pod_review(GOOD)
    body["request"]["object"]["spec"].update(spec_change)
    outcome = run(body)
    assert outcome.decision == "denied"
    message = outcome.response["response"]["status"]["message"]
    assert f"annotation {P}inject:" in message and words in message


def test_a_container_already_using_the_token_path_is_denied() -> None:
    body = pod_review(GOOD)
    app = body["request"]["object"]["spec"]["containers"][0]
    app["volumeMounts"] = [{"name": "mine", "mountPath": "/var/run/tokens/billing"}]
    message = run(body).response["response"]["status"]["message"]
    assert f"annotation {P}containers:" in message
    assert "/var/run/tokens/billing" in message


def test_catalogue_covers_the_issue() -> None:
    assert set(POD_KEYS) >= {
        "inject", "role", "auth-method", "auth-mount", "vault-address", "containers", "status",
        "cpu-request", "cpu-limit", "memory-request", "memory-limit",
    }  # fmt: skip
    assert set(CREDENTIAL_KEYS) >= {
        "credential", "kv-mount", "token-endpoint", "issuer", "client-id", "client-auth",
        "scope", "audience", "resource", "file-mode", "file-group", "required", "grant",
    }  # fmt: skip
    # No credential key is the prefix of another: <key>-<name> splits one way only.
    for key in CREDENTIAL_KEYS:
        for other in CREDENTIAL_KEYS:
            assert key == other or not other.startswith(f"{key}-")


def test_hyphenated_keys_and_names_split_unambiguously() -> None:
    parsed = parse(
        {
            f"{P}credential-client-id": "apps/a",
            f"{P}client-id-client-id": "abc",
            f"{P}token-endpoint-client-id": "https://idp.example/token",
        }
    )
    assert parsed.problems == []
    assert parsed.credentials["client-id"]["client_id"] == "abc"
