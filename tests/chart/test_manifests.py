"""manifests/: generated from the chart and up to date; kustomize component; the Vault side."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import render_manifests
from tests.chart.rendering import (
    CHART_DIR,
    ROOT,
    Rendered,
    load_rendered_config,
    restricted_problems,
    validate_objects,
    values_from,
)

MANIFESTS = ROOT / "manifests"
EXAMPLE = values_from(CHART_DIR / "ci" / "example-values.yaml")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def test_generated_files_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert render_manifests.main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "stale.yaml"
    stale.write_text("old\n")
    missing = tmp_path / "missing.yaml"
    monkeypatch.setattr(render_manifests, "ROOT", tmp_path)
    monkeypatch.setattr(
        render_manifests, "expected_files", lambda: {stale: "new\n", missing: "new\n"}
    )
    assert render_manifests.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "out of date: stale.yaml" in err
    assert "out of date: missing.yaml" in err
    assert stale.read_text() == "old\n"


def test_chart_ships_the_alert_rules_and_dashboard_it_was_given() -> None:
    for source, copy in render_manifests.COPIES.items():
        if source.exists():
            assert copy.read_bytes() == source.read_bytes(), copy.name
        assert copy.exists()


def test_plain_deployment_manifest() -> None:
    objects = load_all(MANIFESTS / "deployment" / "token-sidecar.yaml")
    rendered = Rendered(objects, "")
    assert [o["kind"] for o in objects] == ["ServiceAccount", "ConfigMap", "Service", "Deployment"]
    assert validate_objects(objects, "native") == []
    assert restricted_problems(rendered.pod) == []
    for obj in objects:
        assert "namespace" not in obj["metadata"]  # kubectl apply -n chooses it
        assert "helm.sh/chart" not in obj["metadata"].get("labels", {})
        assert "helm.sh/hook" not in obj["metadata"].get("annotations", {})
    settings = load_rendered_config(rendered.config)
    assert settings.vault.auth.role == "my-app"
    assert rendered.pod["serviceAccountName"] == "my-app"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kustomize_component_adds_the_sidecar_to_an_existing_deployment() -> None:
    objects = kustomize(MANIFESTS / "kustomize" / "example")
    assert validate_objects(objects, "native") == []
    rendered = Rendered(objects, "")
    pod = rendered.pod
    assert restricted_problems(pod) == []
    [sidecar] = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    app = rendered.app
    assert app["image"] == "busybox:1.36.1"  # the app itself is untouched
    assert {"name": "token-sidecar-tokens", "mountPath": "/var/run/tokens", "readOnly": True} in (
        app["volumeMounts"]
    )
    assert pod["securityContext"]["runAsUser"] == 10001  # the app keeps its user...
    assert pod["securityContext"]["fsGroup"] == 65532  # ...and reads the files by group
    # The ConfigMap is generated with a content hash, and the volume follows the new name.
    config_map = rendered.config_map
    assert re.fullmatch(r"token-sidecar-[a-z0-9]{10}", config_map["metadata"]["name"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token-sidecar-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    # The example's own config replaced the component's, and the sidecar accepts it.
    settings = load_rendered_config(rendered.config)
    assert [c.name for c in settings.credentials] == ["billing"]
    sidecar_mounts = [Path(m["mountPath"]) for m in sidecar["volumeMounts"]]
    for path in (settings.credentials[0].output_dir, settings.journal.dir):
        assert path is not None
        assert any(path.is_relative_to(m) for m in sidecar_mounts)
    assert Path(settings.vault.auth.jwt_file).parent in sidecar_mounts


def test_kustomize_component_alone_uses_the_chart_config() -> None:
    objects = kustomize(MANIFESTS / "kustomize" / "example" / "app")
    config = Rendered(objects, "").config
    chart_config = yaml.safe_load((MANIFESTS / "kustomize" / "sidecar" / "config.yaml").read_text())
    assert config == chart_config
    load_rendered_config(config)


def test_component_files_exist() -> None:
    component = MANIFESTS / "kustomize" / "sidecar"
    kustomization = yaml.safe_load((component / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    for generator in kustomization["configMapGenerator"]:
        for name in generator["files"]:
            assert (component / name).exists()
    for patch in kustomization["patches"]:
        assert (component / patch["path"]).exists()


def test_vault_setup_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    script = MANIFESTS / "vault" / "setup.sh"
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert script.stat().st_mode & 0o111, "setup.sh should be executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def test_vault_files_match_the_example() -> None:
    [credential] = EXAMPLE["config"]["credentials"]
    mount = credential.get("kv_mount", "secret")
    path = credential["kv_path"]
    policy = (MANIFESTS / "vault" / "policy.hcl").read_text()
    blocks = dict(re.findall(r'path "([^"]+)" \{\s*capabilities = (\[[^\]]*\])\s*\}', policy))
    assert blocks == {
        f"{mount}/data/{path}": '["read", "create", "update"]',
        f"{mount}/metadata/{path}": '["read"]',
    }
    assert policy.count("{") == policy.count("}")
    script = (MANIFESTS / "vault" / "setup.sh").read_text()
    defaults = dict(re.findall(r"^([A-Z_]+)=\$\{\1:-([^}]*)\}", script, flags=re.MULTILINE))
    assert defaults["KV_MOUNT"] == mount
    assert defaults["KV_PATH"] == path
    assert defaults["ROLE"] == EXAMPLE["config"]["vault"]["auth"]["role"]
    assert defaults["SERVICE_ACCOUNT"] == EXAMPLE["serviceAccount"]["name"]
    assert defaults["AUDIENCE"] == "vault"


def test_plain_injector_manifest(tmp_path: Path) -> None:
    from sidecar.injector.app import load_config  # noqa: PLC0415
    from tests.support.podsecurity import restricted_violations  # noqa: PLC0415

    objects = load_all(MANIFESTS / "injector" / "token-sidecar-injector.yaml")
    namespace = render_manifests.INJECTOR_NAMESPACE
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration",
            "Certificate",
            "Certificate",
            "Issuer",
            "Issuer",
        ]
    )
    assert validate_objects(objects, "native") == []
    for obj in objects:
        assert "helm.sh/chart" not in obj["metadata"].get("labels", {})
        if obj["kind"] != "MutatingWebhookConfiguration":
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    assert restricted_violations(deployment["spec"]["template"]) == []
    [webhook_config] = [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    [webhook] = webhook_config["webhooks"]
    service = webhook["clientConfig"]["service"]
    assert (service["name"], service["namespace"]) == ("token-sidecar-injector", namespace)
    annotation = webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    certificates = {o["metadata"]["name"] for o in objects if o["kind"] == "Certificate"}
    assert annotation.split("/") == [namespace, "token-sidecar-injector"]
    assert "token-sidecar-injector" in certificates
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "injector.yaml"
    path.write_text(config_map["data"]["injector.yaml"], encoding="utf-8")
    config = load_config(path)
    assert config.vault.settings.address == "https://vault.vault.svc:8200"
    assert config.injector.sidecar.mode == "native"
