"""Configuration: YAML plus environment; every problem named by its key, values never echoed."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sidecar.config
import sidecar.config.base
import sidecar.config.credential
from sidecar.configload import load_settings
from sidecar.errors import ConfigError

MINIMAL = """
vault:
  address: http://127.0.0.1:8200
  auth: {method: kubernetes, role: my-app}
credentials:
  - name: billing
    kv_path: apps/my-app/billing
    token_endpoint: https://idp.example/oauth2/token
    output_dir: /var/run/tokens/billing
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return info.value.problems


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    cred = settings.credentials[0]
    assert cred.kv_mount == "secret"
    assert cred.client_auth == "client_secret_basic"
    assert cred.file_mode == 0o440
    assert settings.vault.auth.mount_path == "kubernetes"
    assert settings.server.port == 8099
    assert settings.log.format == "json"


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_SIDECAR_LOG__LEVEL", "debug")
    monkeypatch.setenv("TOKEN_SIDECAR_VAULT__AUTH__ROLE", "other")
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example:8200")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.log.level == "debug"
    assert settings.vault.auth.role == "other"
    assert settings.vault.address == "https://vault.example:8200"
    assert settings.vault.namespace == "team-a"
    monkeypatch.setenv("TOKEN_SIDECAR_VAULT__ADDRESS", "https://wins.example")
    assert load_settings(write(tmp_path, MINIMAL)).vault.address == "https://wins.example"


def test_credentials_from_environment_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TOKEN_SIDECAR_CREDENTIALS",
        '[{"name": "a", "kv_path": "p", "issuer": "https://idp.example", "output_dir": "/t/a"}]',
    )
    settings = load_settings(None)
    assert settings.credentials[0].issuer == "https://idp.example"


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
vault:
  address: http://vault.example:8200
  auth: {method: kubernetes, colour: blue}
credentials:
  - name: Billing_1
    kv_path: apps/x
    token_endpoint: https://idp.example/token
    output_dir: /t/a
    file_mode: "0666"
  - name: b
    kv_path: apps/y
    output_dir: /t/b
server: {address: "nope"}
log: {level: loud}
""",
    )
    text = "\n".join(found)
    assert "vault.auth.colour: unknown key" in text
    assert "credentials[0].name:" in text
    assert "credentials[0].file_mode: must not be world-writable" in text
    assert "credentials[1].token_endpoint: set exactly one of token_endpoint and issuer" in text
    assert "server.address:" in text
    assert "log.level:" in text


def test_plain_http_only_to_loopback(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace("https://idp.example", "http://idp.example"))
    assert found == [
        "credentials[0].token_endpoint: plain http to a non-loopback host "
        "(use https, or set allow_insecure_http: true)"
    ]
    ok = MINIMAL.replace("https://idp.example", "http://127.0.0.1:9000")
    assert load_settings(write(tmp_path, ok)).credentials[0].token_endpoint


def test_duplicates_are_rejected(tmp_path: Path) -> None:
    doubled = (
        MINIMAL
        + """
  - name: billing
    kv_path: apps/other
    issuer: https://idp.example
    output_dir: /var/run/tokens/billing/
"""
    )
    found = problems(tmp_path, doubled)
    assert "credentials[1].name: duplicate name 'billing'" in found
    assert "credentials[1].output_dir: already used by credential 'billing'" in found


def test_method_specific_requirements(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace("role: my-app", "mount: k8s"))
    assert found == ["vault.auth.role: required for auth method 'kubernetes'"]


def test_values_are_never_echoed(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace("name: billing", "name: SUPERSECRETVALUE"))
    assert not any("SUPERSECRETVALUE" in p for p in found)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    assert "not valid YAML at line 1" in problems(tmp_path, "credentials: [")[0]
    assert problems(tmp_path, "- a\n- b\n") == [
        f"--config {tmp_path / 'config.yaml'}: the top level must be a mapping"
    ]


def test_json_is_read_as_yaml_would_read_it_and_without_a_yaml_parser(tmp_path: Path) -> None:
    as_yaml = load_settings(write(tmp_path, MINIMAL))
    data = yaml.safe_load(MINIMAL)
    # The chart's ConfigMap: a comment line, then the JSON document.
    chart = "# rendered by the chart\n\n" + json.dumps(data, indent=2)
    assert load_settings(write(tmp_path, chart)) == as_yaml
    # A YAML flow mapping also starts with "{"; it is not JSON, and PyYAML reads it.
    flow = "{" + json.dumps(data)[1:].replace('"vault":', "vault:", 1)
    assert load_settings(write(tmp_path, flow)) == as_yaml
    # Broken JSON is reported by the YAML parser, with where it breaks.
    assert "not valid YAML at line 1" in problems(tmp_path, '{"vault": [')[0]
    assert problems(tmp_path, "# a list\n[1, 2]") == [
        f"--config {tmp_path / 'config.yaml'}: the top level must be a mapping"
    ]
    probe = (
        "import sys; from pathlib import Path; from sidecar.configload import load_settings; "
        f"load_settings(Path({str(write(tmp_path, chart))!r})); "
        "sys.exit('yaml' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_every_setting_documents_its_default_where_it_is_defined() -> None:
    """Each key of the schema has a docstring naming its default (kopf's configuration style)."""
    modules = [sidecar.config, sidecar.config.base, sidecar.config.credential]
    nodes = [node for module in modules for node in ast.parse(inspect.getsource(module)).body]
    undocumented: list[str] = []
    fields = 0
    for node in nodes:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for index, statement in enumerate(body):
            if not isinstance(statement, ast.AnnAssign) or not isinstance(
                statement.target, ast.Name
            ):
                continue
            fields += 1
            after = body[index + 1] if index + 1 < len(body) else None
            doc = (
                after.value.value
                if isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                else ""
            )
            if "default" not in doc.lower():
                undocumented.append(f"{node.name}.{statement.target.id}")
    assert fields > 50
    assert undocumented == []


CLIENT_CREDENTIALS = """
vault:
  address: http://127.0.0.1:8200
  auth: {method: kubernetes, role: my-app}
credentials:
  - name: svc
    grant: client_credentials
    token_endpoint: https://idp.example/oauth2/token
    output_dir: /var/run/tokens/svc
"""


def cc_with(tmp_path: Path, **keys: str) -> list[str]:
    lines = "".join(f"    {key}: {value}\n" for key, value in keys.items())
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, CLIENT_CREDENTIALS + lines))
    return info.value.problems


def test_grant_defaults_to_refresh_token_and_needs_kv_path(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, MINIMAL)).credentials[0].grant == "refresh_token"
    found = problems(tmp_path, MINIMAL.replace("    kv_path: apps/my-app/billing\n", ""))
    assert found == [
        "credentials[0].kv_path: required for grant refresh_token (Vault holds the token)"
    ]


def test_client_credentials_from_vault_or_from_files(tmp_path: Path) -> None:
    from_vault = CLIENT_CREDENTIALS + "    kv_path: apps/svc\n"
    credential = load_settings(write(tmp_path, from_vault)).credentials[0]
    assert (credential.grant, credential.kv_path) == ("client_credentials", "apps/svc")
    from_files = CLIENT_CREDENTIALS + (
        "    client_id: svc\n"
        "    client_auth: tls_client_auth\n"
        "    client_cert_file: /certs/tls.crt\n"
        "    client_key_file: /certs/tls.key\n"
    )
    credential = load_settings(write(tmp_path, from_files)).credentials[0]
    assert credential.kv_path is None
    assert credential.client_cert_file == Path("/certs/tls.crt")


def test_client_credentials_with_client_auth_none_cannot_work(tmp_path: Path) -> None:
    found = cc_with(tmp_path, kv_path="apps/svc", client_auth="none")
    assert found == [
        "credentials[0].client_auth: none cannot work with grant client_credentials, which needs "
        "client authentication (RFC 6749 §4.4)"
    ]


def test_without_kv_path_every_piece_must_come_from_configuration(tmp_path: Path) -> None:
    assert cc_with(tmp_path) == [
        "credentials[0].client_id: required without kv_path",
        "credentials[0].client_secret_file: required for client_secret_basic without kv_path",
    ]
    assert cc_with(tmp_path, client_id="svc", client_auth="private_key_jwt") == [
        "credentials[0].private_key_file: required for private_key_jwt without kv_path"
    ]


def test_tls_client_auth_needs_a_certificate_source(tmp_path: Path) -> None:
    found = cc_with(tmp_path, client_id="svc", client_auth="self_signed_tls_client_auth")
    assert found == [
        "credentials[0].client_cert_file: client_auth self_signed_tls_client_auth needs a "
        "certificate: client_cert_file and client_key_file, or kv_path with client_cert and "
        "client_key fields"
    ]
    found = cc_with(
        tmp_path, client_id="svc", client_auth="tls_client_auth", client_cert_file="/c.pem"
    )
    assert found == [
        "credentials[0].client_key_file: set client_cert_file and client_key_file together"
    ]
    # Fields of the secret are a source the configuration cannot see: accepted with kv_path.
    settings = load_settings(
        write(tmp_path, CLIENT_CREDENTIALS + "    kv_path: a/b\n    client_auth: tls_client_auth\n")
    )
    assert settings.credentials[0].client_auth == "tls_client_auth"


def test_a_certificate_is_never_sent_over_plain_http(tmp_path: Path) -> None:
    text = MINIMAL.replace("https://idp.example", "http://127.0.0.1:9000") + (
        "    client_auth: tls_client_auth\n"
    )
    assert problems(tmp_path, text) == [
        "credentials[0].token_endpoint: a client certificate is only sent over https://"
    ]


def test_client_secret_file_only_with_a_secret_method(tmp_path: Path) -> None:
    found = cc_with(tmp_path, kv_path="a/b", client_auth="private_key_jwt", client_secret_file="/s")
    assert found == ["credentials[0].client_secret_file: not used by client_auth private_key_jwt"]


def test_grant_problems_are_reported_beside_unrelated_ones(tmp_path: Path) -> None:
    found = cc_with(tmp_path, kv_path="a/b", client_auth="none", file_mode='"0666"')
    assert "credentials[0].file_mode: must not be world-writable" in found
    assert any(p.startswith("credentials[0].client_auth: none cannot work") for p in found)
    found = problems(
        tmp_path,
        MINIMAL.replace("    kv_path: apps/my-app/billing\n", "") + "    file_mode: '0666'\n",
    )
    assert (
        "credentials[0].kv_path: required for grant refresh_token (Vault holds the token)" in found
    )
