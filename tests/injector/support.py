"""Shared pieces of the injector tests: the config, the fixtures, applying an answer's patch."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from sidecar.injector.review import Outcome, review
from sidecar.injector.settings import InjectorConfig, parse_settings

__all__ = [
    "FIXTURES",
    "apply",
    "base_config",
    "fixture",
    "pod_review",
    "schema_problems",
    "sidecar_env",
]

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.yaml"))
VERSIONS = {"native": ("1.29.0", kubernetes_validate.latest_version())}
VERSIONS["classic"] = ("1.25.0", *VERSIONS["native"])


def base_config(**injector: Any) -> InjectorConfig:
    return parse_settings(
        {
            "vault": {
                "address": "https://vault.vault.svc:8200",
                "auth": {"method": "kubernetes", "role": "default-role"},
            },
            "injector": {"sidecar": {"image": "registry.example/token-sidecar:0.1.0"}, **injector},
        }
    )


def fixture(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fixture's AdmissionReview and its expectations."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data["review"], data["expect"]


def pod_review(
    annotations: dict[str, str],
    *,
    namespace: str = "shop",
    spec: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    **request: Any,
) -> dict[str, Any]:
    """An AdmissionReview for a restricted one-container pod with these annotations."""
    pod_spec = spec or {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    metadata: dict[str, Any] = {"generateName": "app-", "annotations": annotations}
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0000-test",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec},
            **request,
        },
    }


def apply(body: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The pod as the API server would store it: the answer's patch applied with jsonpatch."""
    pod = copy.deepcopy(body["request"]["object"])
    response = outcome.response["response"]
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, operations)
    return patched


def schema_problems(
    pod: dict[str, Any], mode: str = "native", *, like: dict[str, Any] | None = None
) -> list[str]:
    """Strict schema problems for the versions the mode supports (with ``like``: only those
    versions that accept the pod ``like``, for a fixture that needs a newer cluster itself)."""
    problems = []
    versions = VERSIONS[mode]
    if like is not None:
        versions = tuple(v for v in versions if not _invalid(like, v))
        assert kubernetes_validate.latest_version() in versions
    for version in versions:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"@{version} {'/'.join(str(p) for p in exc.path)}: {exc.message}")
    return problems


def _invalid(pod: dict[str, Any], version: str) -> bool:
    try:
        kubernetes_validate.validate(pod, version, strict=True)
    except kubernetes_validate.ValidationError:
        return True
    return False


def sidecar_env(pod: dict[str, Any]) -> dict[str, str]:
    """The plain ``value`` environment of the injected sidecar container."""
    found = [
        c
        for key in ("initContainers", "containers")
        for c in pod["spec"].get(key, [])
        if c["name"] == "token-sidecar"
    ]
    if len(found) != 1:
        pytest.fail(f"expected one token-sidecar container, found {len(found)}")
    return {e["name"]: e["value"] for e in found[0]["env"] if "value" in e}


def run(body: dict[str, Any], config: InjectorConfig | None = None) -> Outcome:
    return review(copy.deepcopy(body), config or base_config())
