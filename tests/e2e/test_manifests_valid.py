"""What the kind test would apply, checked without a cluster: every in-cluster object is valid
for Kubernetes 1.32 (strict schemas), the pieces agree with each other, and the chart rendered
with the test's values is valid, "restricted" and loadable by the sidecar."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.rendering import (
    CRD_KINDS,
    container,
    load_rendered_config,
    restricted_problems,
)
from tests.e2e import stack
from tests.e2e.kind import E2EError

KUBERNETES = "1.32"
MANIFESTS = stack.manifest_objects()
GENERATED = [
    *stack.secret_objects(stack.StackSecrets(root_token="r" * 16, client_secret="c" * 16)),
    stack.idp_source_config_map(),
]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def _id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in MANIFESTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _pod(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment", name)["spec"]["template"]["spec"]
    return spec


def _env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.mark.parametrize("obj", MANIFESTS + GENERATED, ids=_id)
def test_object_is_valid_for_kubernetes(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_manifests_hold_what_the_test_expects() -> None:
    kinds = sorted(_id(o) for o in MANIFESTS)
    assert kinds == [
        "ClusterRoleBinding/token-sidecar-e2e-openbao-tokenreview",
        "Deployment/idp",
        "Deployment/openbao",
        "Namespace/e2e-app",
        "Namespace/e2e-infra",
        "Service/idp",
        "Service/openbao",
        "ServiceAccount/openbao",
    ]
    for obj in MANIFESTS + GENERATED:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == stack.INFRA_NAMESPACE, _id(obj)


def test_app_namespace_enforces_restricted() -> None:
    labels = _one("Namespace", stack.APP_NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_images_are_pinned() -> None:
    for name in ("openbao", "idp"):
        pod = _pod(name)
        for c in pod.get("initContainers", []) + pod["containers"]:
            image = c["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), image
            assert not image.endswith(":latest"), image
    assert _pod("openbao")["containers"][0]["image"] == "quay.io/openbao/openbao:2.7.2"


def test_services_match_the_addresses_in_the_sidecar_config() -> None:
    for service, url in (("openbao", stack.VAULT_ADDRESS), ("idp", stack.TOKEN_ENDPOINT)):
        match = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)(/.*)?", url)
        assert match, url
        name, namespace, port = match.group(1), match.group(2), int(match.group(3))
        svc = _one("Service", service)
        assert (name, namespace) == (service, svc["metadata"]["namespace"])
        (svc_port,) = svc["spec"]["ports"]
        assert svc_port["port"] == port
        # The Service's targetPort is a named container port of a pod it selects.
        pod = _pod(service)
        labels = _one("Deployment", service)["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        ports = [p for c in pod["containers"] for p in c.get("ports", [])]
        assert svc_port["targetPort"] in [p["name"] for p in ports]


def test_openbao_listens_where_its_service_points_and_can_review_tokens() -> None:
    pod = _pod("openbao")
    bao = container(pod, "openbao")
    assert "-dev-listen-address=0.0.0.0:8200" in bao["args"]
    assert bao["ports"] == [{"name": "http", "containerPort": 8200}]
    env = _env(bao)
    assert env["BAO_ADDR"] == "http://127.0.0.1:8200"
    for key in ("BAO_DEV_ROOT_TOKEN_ID", "BAO_TOKEN"):
        assert env[key] == {"secretKeyRef": {"name": "openbao-dev", "key": "root-token"}}
    assert pod["serviceAccountName"] == "openbao"
    assert pod["automountServiceAccountToken"] is True  # OpenBao's TokenReview credentials
    binding = _one("ClusterRoleBinding", "token-sidecar-e2e-openbao-tokenreview")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "openbao", "namespace": stack.INFRA_NAMESPACE}
    ]
    secret_keys = {
        o["metadata"]["name"]: set(o["stringData"]) for o in GENERATED if o["kind"] == "Secret"
    }
    assert secret_keys["openbao-dev"] == {"root-token"}


def test_idp_pod_uses_the_config_map_and_forwards_to_the_server() -> None:
    pod = _pod("idp")
    config_map = stack.idp_source_config_map()
    source_volume = next(v for v in pod["volumes"] if v["name"] == "source")
    assert source_volume["configMap"]["name"] == config_map["metadata"]["name"]
    text = str(pod)
    referenced = set(re.findall(r"/source/([\w.-]+)", text))
    assert referenced <= set(config_map["data"]), referenced - set(config_map["data"])
    assert set(config_map["data"]) == set(stack.IDP_SOURCE_FILES)
    # ConfigMaps hold at most 1 MiB.
    assert sum(len(v.encode()) for v in config_map["data"].values()) < 1024 * 1024
    idp = container(pod, "idp")
    forward = container(pod, "forward")
    assert _env(forward)["FORWARD_TARGET_PORT"] == _env(idp)["IDP_PORT"]
    assert _env(forward)["FORWARD_LISTEN_PORT"] == str(forward["ports"][0]["containerPort"])
    assert _env(idp)["IDP_CLIENT_SECRETS"] == {
        "secretKeyRef": {"name": "idp-clients", "key": "IDP_CLIENT_SECRETS"}
    }
    assert forward["readinessProbe"]["httpGet"]["port"] == "http"


def test_chart_with_the_e2e_values_renders_valid_restricted_objects() -> None:
    objects = stack.render_release(stack.chart_values("e2e-0123abcd"))
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    workloads = [o for o in objects if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in workloads] == [stack.FULLNAME]
    pod = workloads[0]["spec"]["template"]["spec"]
    assert restricted_problems(pod) == []
    assert pod["serviceAccountName"] == stack.SERVICE_ACCOUNT
    sidecar = container(pod, stack.SIDECAR_CONTAINER)
    assert sidecar in pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["image"] == f"{stack.SIDECAR_REPOSITORY}:e2e-0123abcd"
    assert sidecar["imagePullPolicy"] == "Never"
    app = container(pod, stack.APP_CONTAINER)
    assert app["args"] == [stack.APP_SCRIPT]
    mount = next(m for m in app["volumeMounts"] if stack.TOKEN_DIR.startswith(m["mountPath"]))
    assert mount["readOnly"] is True
    projected = next(v for v in pod["volumes"] if "projected" in v)
    (source,) = projected["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == stack.AUDIENCE
    assert pod["securityContext"]["fsGroup"] == stack.FS_GROUP
    hooks = [o for o in objects if stack.is_hook(o)]
    assert [o["kind"] for o in hooks] == ["Pod"]


def test_rendered_config_is_accepted_by_the_sidecar() -> None:
    objects = stack.render_release(stack.chart_values("e2e-0123abcd"))
    (config_map,) = [o for o in objects if "config.yaml" in o.get("data", {})]
    settings = load_rendered_config(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert settings.vault.address == stack.VAULT_ADDRESS
    assert settings.vault.auth.method == "kubernetes"
    assert settings.vault.auth.role == stack.VAULT_ROLE
    (credential,) = settings.credentials
    assert credential.name == stack.CREDENTIAL
    assert credential.kv_path == stack.KV_PATH
    assert credential.token_endpoint == stack.TOKEN_ENDPOINT
    assert str(credential.output_dir) == stack.TOKEN_DIR
    assert credential.file_group == stack.FS_GROUP


def test_policy_is_the_shipped_one_adapted_to_the_test_path() -> None:
    policy = stack.adapted_policy()
    assert f'path "secret/data/{stack.KV_PATH}"' in policy
    assert f'path "secret/metadata/{stack.KV_PATH}"' in policy
    assert "my-app" not in policy.replace("my-app-tokens", "")
    shipped = stack.POLICY_FILE.read_text(encoding="utf-8")
    assert policy == shipped.replace("apps/my-app/billing", stack.KV_PATH)
    with pytest.raises(E2EError, match="example paths"):
        stack.adapted_policy(text='path "secret/data/other" {}')


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_app_script_is_valid_shell() -> None:
    result = subprocess.run(
        ["sh", "-n", "-c", stack.APP_SCRIPT],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
