"""values.schema.json rejects mistakes and mirrors the sidecar's configuration model."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from sidecar.config import (
    CredentialConfig,
    HttpConfig,
    LogConfig,
    RefreshConfig,
    ServerConfig,
    Settings,
    VaultAuthConfig,
    VaultConfig,
)
from tests.chart.rendering import CHART_DIR

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
CONFIG = SCHEMA["properties"]["config"]
CREDENTIAL = {"name": "billing", "kv_path": "apps/a", "token_endpoint": "https://idp.example/t"}
# client_credentials without Vault: everything from configuration and mounted files.
CC_FILES: dict[str, Any] = {
    "name": "ledger",
    "grant": "client_credentials",
    "client_id": "ledger-writer",
    "client_auth": "tls_client_auth",
    "client_cert_file": "/var/run/secrets/client-cert/tls.crt",
    "client_key_file": "/var/run/secrets/client-cert/tls.key",
    "issuer": "https://idp.example",
}
# Keys only the chart sets, from other values (journal.dir from journal.*).
CHART_OWNED_SECTIONS = {"journal", "events"}  # rendered from the chart's own values


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def credential(**extra: Any) -> dict[str, Any]:
    return {"config": {"credentials": [CREDENTIAL | extra]}}


def test_values_file_points_editors_at_the_schema() -> None:
    first = (CHART_DIR / "values.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=values.schema.json"


def test_schema_is_draft_07_and_accepts_the_defaults() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(SCHEMA).validate(defaults)


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key, child in node.get("properties", {}).items():
        yield f"{path}.{key}".lstrip("."), child
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def test_every_key_is_described_and_typed() -> None:
    for path, node in walk(SCHEMA):
        assert node.get("description"), path
        assert "type" in node, path


def test_typo_prone_objects_forbid_unknown_keys() -> None:
    strict = [
        "",
        "workload",
        "app",
        "tokens",
        "journal",
        "sidecar",
        "sidecar.image",
        "sidecar.startupProbe",
        "config",
        "config.vault",
        "config.vault.auth",
        "config.credentials[]",
        "config.server",
        "config.log",
        "config.refresh",
        "config.http",
        "serviceAccount",
        "service",
        "monitoring",
        "monitoring.serviceMonitor",
        "events",
    ]
    nodes = dict(walk(SCHEMA)) | {"": SCHEMA}
    nodes["config.credentials[]"] = CONFIG["properties"]["credentials"]["items"]
    for path in strict:
        assert nodes[path]["additionalProperties"] is False, path


def model_keys(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


@pytest.mark.parametrize(
    ("schema_path", "model"),
    [
        (("vault",), VaultConfig),
        (("vault", "auth"), VaultAuthConfig),
        (("server",), ServerConfig),
        (("log",), LogConfig),
        (("refresh",), RefreshConfig),
        (("http",), HttpConfig),
    ],
    ids=lambda p: ".".join(p) if isinstance(p, tuple) else "",
)
def test_config_sections_have_exactly_the_sidecar_keys(
    schema_path: tuple[str, ...], model: type[BaseModel]
) -> None:
    node = CONFIG
    for key in schema_path:
        node = node["properties"][key]
    assert set(node["properties"]) == model_keys(model)


def test_credentials_have_exactly_the_sidecar_keys() -> None:
    items = CONFIG["properties"]["credentials"]["items"]
    assert set(items["properties"]) == model_keys(CredentialConfig)
    assert set(items["required"]) == {
        name for name, field in CredentialConfig.model_fields.items() if field.is_required()
    } - {"output_dir"}  # the chart fills it in


def test_config_has_the_sidecar_sections_the_user_sets() -> None:
    assert set(CONFIG["properties"]) == model_keys(Settings) - CHART_OWNED_SECTIONS


@pytest.mark.parametrize(
    ("schema_path", "model", "field"),
    [
        (("vault", "auth", "method"), VaultAuthConfig, "method"),
        (("log", "level"), LogConfig, "level"),
        (("log", "format"), LogConfig, "format"),
        (("credentials", "client_auth"), CredentialConfig, "client_auth"),
        (("credentials", "signing_alg"), CredentialConfig, "signing_alg"),
    ],
    ids=lambda p: ".".join(p) if isinstance(p, tuple) else "",
)
def test_enums_match_the_sidecar(
    schema_path: tuple[str, ...], model: type[BaseModel], field: str
) -> None:
    node = CONFIG
    for key in schema_path:
        node = node["properties"][key]
        if node.get("type") == "array":
            node = node["items"]
    assert set(node["enum"]) == set(typing.get_args(model.model_fields[field].annotation))


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"replica": 2}, id="unknown-top-level-key"),
        pytest.param({"replicas": "2"}, id="replicas-as-string"),
        pytest.param({"sidecar": {"mode": "sidecar"}}, id="bad-sidecar-mode"),
        pytest.param({"sidecar": {"imagee": {}}}, id="unknown-sidecar-key"),
        pytest.param(credential(kv_pth="x"), id="unknown-credential-key"),
        pytest.param(credential(client_secret="s3cr3t"), id="client-secret-in-values"),
        pytest.param(credential(refresh_token="rt"), id="refresh-token-in-values"),
        pytest.param(credential(token="t"), id="token-in-values"),
        pytest.param({"config": {"vault": {"token": "t"}}}, id="vault-token-in-values"),
        pytest.param({"config": {"client_secret": "s"}}, id="secret-in-config"),
        pytest.param(credential(issuer="https://idp.example"), id="endpoint-and-issuer"),
        pytest.param(credential(name="Billing_1"), id="bad-credential-name"),
        pytest.param(credential(client_auth="basic"), id="bad-client-auth"),
        pytest.param({"config": {"log": {"level": "verbose"}}}, id="bad-log-level"),
        pytest.param({"config": {"refresh": {"fraction": 2}}}, id="refresh-fraction-range"),
        pytest.param({"config": {"vault": {"auth": {"method": "ldap"}}}}, id="bad-auth-method"),
        pytest.param({"config": {"vault": {"address": "vault:8200"}}}, id="vault-address-no-url"),
        pytest.param({"config": {"journal": {"dir": "/var/run/j"}}}, id="journal-is-chart-owned"),
        pytest.param({"serviceAccountToken": {"expirationSeconds": 60}}, id="sa-token-too-short"),
        pytest.param({"tokens": {"mountPath": "tokens"}}, id="relative-mount-path"),
        pytest.param({"monitoring": {"serviceMonitor": {"enable": True}}}, id="monitor-typo"),
        pytest.param(credential(grant="password"), id="bad-grant"),
        pytest.param(
            credential(grant="client_credentials", client_auth="none"),
            id="client-credentials-without-client-auth",
        ),
        pytest.param(
            {"config": {"credentials": [{"name": "a", "token_endpoint": "https://i.example"}]}},
            id="refresh-token-without-kv-path",
        ),
        pytest.param(
            {"config": {"credentials": [without(CC_FILES, "client_id")]}},
            id="client-credentials-without-kv-path-or-client-id",
        ),
        pytest.param(
            {
                "config": {
                    "credentials": [
                        {k: v for k, v in CC_FILES.items() if not k.startswith("client_")}
                        | {"client_id": "c", "client_auth": "tls_client_auth"}
                    ]
                }
            },
            id="tls-auth-without-certificate-source",
        ),
        pytest.param(
            {"config": {"credentials": [without(CC_FILES, "client_key_file")]}},
            id="certificate-without-key",
        ),
        pytest.param(credential(client_cert_file="tls.crt", client_key_file="tls.key"), id="rel"),
    ],
)
def test_schema_rejects(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(values)


def test_schema_rejection_names_the_key(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="client_secret"):
        chart.validate_schema(credential(client_secret="s3cr3t"))
    with pytest.raises(helm_python.HelmValuesError, match="/replicas"):
        chart.validate_schema({"replicas": "2"})


def test_render_refuses_values_the_schema_rejects(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(credential(client_secret="s3cr3t"), name="shop", namespace="team-a")


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(credential(), id="minimal-credential"),
        pytest.param(credential(file_mode="0400", file_group=1000), id="file-mode"),
        pytest.param(credential(file_mode=0o440), id="file-mode-as-number"),
        pytest.param({"global": {"imageRegistry": "x"}}, id="global-as-subchart"),
        pytest.param({"app": {"securityContext": {"runAsUser": 10001}}}, id="k8s-objects-open"),
        pytest.param(credential(grant="client_credentials"), id="client-credentials-from-vault"),
        pytest.param({"config": {"credentials": [CC_FILES]}}, id="client-credentials-from-files"),
        pytest.param(
            credential(client_auth="self_signed_tls_client_auth"), id="tls-auth-fields-in-vault"
        ),
        pytest.param(
            credential(client_cert_file="/c/tls.crt", client_key_file="/c/tls.key"),
            id="certificate-bound-refresh-token-grant",
        ),
    ],
)
def test_schema_accepts(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    chart.validate_schema(values)
