"""Render the chart with Helm's own engine and look at the result, for the chart tests.

`render` returns the objects (hooks included) and NOTES.txt; `restricted_problems` checks a pod
against Pod Security "restricted"; `validate_objects` checks objects against the upstream
Kubernetes schemas, strictly, for the oldest and newest version the sidecar mode supports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

from sidecar.config import Settings
from sidecar.configload import load_settings

__all__ = [
    "CERT_MANAGER_KINDS",
    "CHART_DIR",
    "CI_VALUES",
    "CRD_KINDS",
    "NAMESPACE",
    "RELEASE",
    "ROOT",
    "Rendered",
    "is_injector",
    "load_rendered_config",
    "pod_containers",
    "render",
    "restricted_problems",
    "validate_objects",
    "values_from",
]

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "token-sidecar"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "shop"
NAMESPACE = "team-a"
# prometheus-operator kinds: not in the upstream schemas, so their shape is asserted instead.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# cert-manager kinds (the injector's TLS), likewise.
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}
OLDEST = {"native": "1.29.0", "classic": "1.25.0"}
NEWEST = kubernetes_validate.latest_version()
SIDECAR = "token-sidecar"


def values_from(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        return {obj["kind"] for obj in self.objects}

    @property
    def deployment(self) -> dict[str, Any]:
        """The Deployment of the app and its sidecar (not the injector's)."""
        found = [d for d in self.all("Deployment") if not is_injector(d)]
        assert len(found) == 1, f"expected one app Deployment, found {len(found)}"
        return found[0]

    @property
    def injector(self) -> dict[str, Any]:
        found = [d for d in self.all("Deployment") if is_injector(d)]
        assert len(found) == 1, f"expected one injector Deployment, found {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def sidecar(self) -> dict[str, Any]:
        return container(self.pod, SIDECAR)

    @property
    def app(self) -> dict[str, Any]:
        return container(self.pod, "app")

    @property
    def config_map(self) -> dict[str, Any]:
        maps = [m for m in self.all("ConfigMap") if "config.yaml" in m.get("data", {})]
        assert len(maps) == 1
        return maps[0]

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = yaml.safe_load(self.config_map["data"]["config.yaml"])
        return config


def is_injector(obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return bool(labels.get("app.kubernetes.io/component") == "injector")


def render(
    values: dict[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    with helm_python.Chart.load(chart_dir) as chart:
        rendered = chart.render(values or {}, name=release, namespace=namespace)
    objects: list[dict[str, Any]] = []
    notes = ""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


def pod_containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_containers(pod) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}, found {len(found)}"
    return found[0]


def restricted_problems(pod: dict[str, Any]) -> list[str]:
    """Where a pod spec breaks Pod Security "restricted" (and our read-only root rule)."""
    problems: list[str] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"pod: {flag}")
    allowed = {"configMap", "emptyDir", "projected", "secret", "downwardAPI", "csi", "ephemeral"}
    allowed.add("persistentVolumeClaim")
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= allowed:
            problems.append(f"volume {volume['name']}: {sorted(set(volume) - {'name'})}")
    for c in pod_containers(pod):
        problems += _container_problems(c, pod.get("securityContext", {}))
    return problems


def _container_problems(c: dict[str, Any], pod_sc: dict[str, Any]) -> list[str]:
    sc = c.get("securityContext", {})
    capabilities = sc.get("capabilities", {})
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    checks = {
        "runAsNonRoot": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True,
        "runAsUser not 0": sc.get("runAsUser", pod_sc.get("runAsUser")) != 0,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "not privileged": not sc.get("privileged"),
        "capabilities.drop ALL": "ALL" in capabilities.get("drop", []),
        "no added capabilities": not set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"},
        "seccompProfile": seccomp.get("type") in ("RuntimeDefault", "Localhost"),
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
    }
    return [f"container {c['name']}: {check}" for check, ok in checks.items() if not ok]


def validate_objects(objects: list[dict[str, Any]], mode: str) -> list[str]:
    """Validate every non-CRD object strictly for the oldest and newest supported versions."""
    errors: list[str] = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS | CERT_MANAGER_KINDS:
            continue
        for version in (OLDEST[mode], NEWEST):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} @{version}: {path} {exc}")
    return errors


def load_rendered_config(config: dict[str, Any]) -> Settings:
    """Load a rendered config with the sidecar's own loader, as the container would."""
    config = dict(config)
    fd, name = tempfile.mkstemp(suffix=".yaml")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle)
        return load_settings(path)
    finally:
        path.unlink()
