"""The kind test's injector step, checked without a cluster: its objects are valid, and the
injector configured as the test's release configures it (the chart rendered with the test's
values) injects the test's Deployment into a valid, restricted pod whose sidecar environment
the sidecar's own loader accepts, and refuses the bad pod naming its annotation."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from sidecar.configload import load_settings
from sidecar.injector.app import load_config
from sidecar.injector.review import review
from sidecar.injector.settings import InjectorConfig
from tests.chart.rendering import is_injector
from tests.e2e import injection, stack
from tests.support.podsecurity import restricted_violations

KUBERNETES = "1.32"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_TOKEN", "POD_NAME"):
        monkeypatch.delenv(name, raising=False)


def release_injector_config(tmp_path: Path) -> InjectorConfig:
    values = {**stack.chart_values("e2e-0123abcd"), **injection.injector_values()}
    objects = stack.render_release(values)
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"} == {
        stack.FULLNAME,
        injection.INJECTOR_DEPLOYMENT,
    }
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap" and is_injector(o)]
    path = tmp_path / "injector.yaml"
    path.write_text(config_map["data"]["injector.yaml"], encoding="utf-8")
    return load_config(path)


def admission(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e2e",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": injection.NAMESPACE,
            "object": pod,
        },
    }


def test_objects_are_valid_and_the_namespace_opts_in() -> None:
    objects = injection.objects()
    for obj in [*objects, injection.denied_pod()]:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    namespace = objects[0]
    labels = namespace["metadata"]["labels"]
    assert labels.items() >= injection.NAMESPACE_LABEL.items()
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_release_injects_the_deployment_and_the_sidecar_accepts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = release_injector_config(tmp_path)
    assert config.injector.sidecar.image == f"{stack.SIDECAR_REPOSITORY}:e2e-0123abcd"
    assert config.injector.sidecar.image_pull_policy == "Never"
    deployment = injection.objects()[2]
    pod = {"apiVersion": "v1", "kind": "Pod", **deployment["spec"]["template"]}
    pod["metadata"] = {**pod["metadata"], "generateName": f"{injection.DEPLOYMENT}-"}
    outcome = review(admission(pod), config)
    assert outcome.decision == "injected", outcome.problems
    operations = json.loads(base64.b64decode(outcome.response["response"]["patch"]))
    injected: dict[str, Any] = jsonpatch.apply_patch(pod, operations)
    kubernetes_validate.validate(injected, KUBERNETES, strict=True)
    assert restricted_violations(injected) == []
    assert injection.injection_problems(injected) == []
    problems, _ = stack.native_order_problems(injected)
    assert "is not an init container" not in " ".join(problems)  # no status here, only spec
    [sidecar] = injected["spec"]["initContainers"]
    for item in sidecar["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    settings = load_settings(None)
    assert settings.vault.address == stack.VAULT_ADDRESS
    assert settings.vault.allow_insecure_http is True
    assert settings.vault.auth.role == injection.VAULT_ROLE
    [credential] = settings.credentials
    assert (credential.name, credential.kv_path) == (stack.CREDENTIAL, injection.KV_PATH)
    assert credential.token_endpoint == stack.TOKEN_ENDPOINT
    assert str(credential.output_dir) == stack.TOKEN_DIR
    assert credential.file_group == stack.FS_GROUP


def test_the_bad_pod_is_refused_naming_its_annotation(tmp_path: Path) -> None:
    config = release_injector_config(tmp_path)
    outcome = review(admission(injection.denied_pod()), config)
    assert outcome.decision == "denied"
    assert injection.BAD_ANNOTATION in outcome.response["response"]["status"]["message"]
