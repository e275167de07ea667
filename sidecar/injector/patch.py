"""The pod after injection, and the JSON patch that gets it there (no I/O).

:func:`inject` returns a mutated copy of the pod: the sidecar container, its volumes and the
app containers' read-only token mounts. :func:`json_patch` diffs the two with ``jsonpatch``,
which escapes ``/`` and ``~`` in keys (``token-sidecar.io~1status``) as RFC 6901 requires.

Where the sidecar goes:

- native (Kubernetes >= 1.29): an init container with ``restartPolicy: Always`` and a startup
  probe on ``/readyz``, so the containers after it start only once the first token exists. It
  is placed after the pod's existing native sidecars (a service mesh's proxy, which its
  network may need) and before every other init container that follows them, so those can
  use the token too;
- classic: the first regular container, for older clusters; the app may start before the
  first token, and ``kubectl.kubernetes.io/default-container`` keeps pointing at the app.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonpatch

from sidecar.injector.annotations import STATUS_INJECTED, Problem, annotation
from sidecar.injector.settings import SidecarTemplate

__all__ = [
    "DEFAULT_CONTAINER",
    "VOLUME_JOURNAL",
    "VOLUME_JWT",
    "VOLUME_TOKENS",
    "Injection",
    "Result",
    "inject",
    "json_patch",
    "sidecar_container",
]

VOLUME_TOKENS = "token-sidecar-tokens"
VOLUME_JOURNAL = "token-sidecar-journal"
VOLUME_JWT = "token-sidecar-vault-jwt"
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


@dataclass(frozen=True)
class Injection:
    """What to add, decided from the annotations and the injector's config."""

    env: tuple[Mapping[str, Any], ...]
    resources: Mapping[str, Mapping[str, str]]
    containers: tuple[str, ...] | None  # the containers that get the token mount; None: all
    uses_jwt: bool  # mount the projected service-account token


@dataclass
class Result:
    pod: dict[str, Any]
    problems: list[Problem]
    warnings: list[str]


def _probe(path: str, port: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def sidecar_container(injection: Injection, template: SidecarTemplate) -> dict[str, Any]:
    """The sidecar container, meeting Pod Security "restricted" on its own."""
    container: dict[str, Any] = {
        "name": template.name,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "args": ["run"],
        "env": [dict(item) for item in injection.env],
        "ports": [{"name": "token-metrics", "containerPort": template.port, "protocol": "TCP"}],
        "startupProbe": _probe("/readyz", template.port, 1, template.startup_failure_threshold),
        "livenessProbe": _probe("/livez", template.port, 10, 3),
        "readinessProbe": _probe("/readyz", template.port, 5, 2),
        "resources": {kind: dict(values) for kind, values in injection.resources.items()},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": template.run_as_user,
            "runAsGroup": template.run_as_group,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": VOLUME_TOKENS, "mountPath": template.tokens_mount_path}],
    }
    if template.mode == "native":
        container["restartPolicy"] = "Always"
    mounts = container["volumeMounts"]
    if template.journal:
        mounts.append({"name": VOLUME_JOURNAL, "mountPath": template.journal_mount_path})
    if injection.uses_jwt:
        mounts.append({"name": VOLUME_JWT, "mountPath": template.jwt_mount_path, "readOnly": True})
    return container


def _volumes(injection: Injection, template: SidecarTemplate) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": VOLUME_TOKENS,
            "emptyDir": {"medium": "Memory", "sizeLimit": template.tokens_size_limit},
        }
    ]
    if template.journal:
        volumes.append(
            {
                "name": VOLUME_JOURNAL,
                "emptyDir": {"medium": "Memory", "sizeLimit": template.journal_size_limit},
            }
        )
    if injection.uses_jwt:
        token = {
            "audience": template.audience,
            "expirationSeconds": template.token_expiration_seconds,
            "path": "token",
        }
        volumes.append(
            {"name": VOLUME_JWT, "projected": {"sources": [{"serviceAccountToken": token}]}}
        )
    return volumes


def _all_containers(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                yield container


def _conflicts(
    spec: Mapping[str, Any], injection: Injection, template: SidecarTemplate
) -> list[Problem]:
    inject = annotation("inject")
    problems: list[Problem] = []
    names = [c.get("name") for c in _all_containers(spec)]
    if template.name in names:
        problems.append(Problem(inject, f"the pod already has a container named {template.name!r}"))
    existing = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for volume in _volumes(injection, template):
        if volume["name"] in existing:
            problems.append(
                Problem(inject, f"the pod already has a volume named {volume['name']!r}")
            )
    if injection.containers is not None:
        problems += [
            Problem(annotation("containers"), f"the pod has no container named {name!r}")
            for name in injection.containers
            if name not in names
        ]
    return problems


def _mount_targets(
    spec: Mapping[str, Any], selection: Sequence[str] | None
) -> list[dict[str, Any]]:
    return [c for c in _all_containers(spec) if selection is None or c.get("name") in selection]


def inject(pod: Mapping[str, Any], injection: Injection, template: SidecarTemplate) -> Result:
    """The pod with the sidecar added, or the problems that prevent it."""
    mutated: dict[str, Any] = copy.deepcopy(dict(pod))
    spec: dict[str, Any] = mutated.setdefault("spec", {})
    problems = _conflicts(spec, injection, template)
    warnings: list[str] = []
    targets = _mount_targets(spec, injection.containers)
    token_path = template.tokens_mount_path
    for container in targets:
        for mount in container.get("volumeMounts") or []:
            path = str(mount.get("mountPath", "")).rstrip("/")
            if path == token_path or path.startswith(f"{token_path}/"):
                problems.append(
                    Problem(
                        annotation("containers"),
                        f"container {container.get('name')!r} already mounts {path}, where the "
                        "tokens go",
                    )
                )
    if problems:
        return Result(mutated, problems, warnings)

    for container in targets:
        container.setdefault("volumeMounts", []).append(
            {"name": VOLUME_TOKENS, "mountPath": token_path, "readOnly": True}
        )
    sidecar = sidecar_container(injection, template)
    if template.mode == "native":
        init = spec.setdefault("initContainers", [])
        native = [i for i, c in enumerate(init) if c.get("restartPolicy") == "Always"]
        init.insert(native[-1] + 1 if native else 0, sidecar)
    else:
        containers = spec.setdefault("containers", [])
        metadata = mutated.setdefault("metadata", {})
        annotations = metadata.setdefault("annotations", {})
        if containers and DEFAULT_CONTAINER not in annotations:
            annotations[DEFAULT_CONTAINER] = containers[0].get("name")
        containers.insert(0, sidecar)
        warnings.append(
            "the sidecar runs as a classic container (the injector's mode): the app may start "
            f"before the first token exists; wait for {token_path}/<name>/access_token or retry"
        )
    spec.setdefault("volumes", []).extend(_volumes(injection, template))
    mutated.setdefault("metadata", {}).setdefault("annotations", {})[annotation("status")] = (
        STATUS_INJECTED
    )

    declared = {
        port.get("containerPort")
        for c in _all_containers(spec)
        if c is not sidecar
        for port in c.get("ports") or []
        if isinstance(port, dict)
    }
    if template.port in declared:
        warnings.append(
            f"a container of the pod declares port {template.port}, which the sidecar listens "
            "on in the same network namespace"
        )
    return Result(mutated, problems, warnings)


def json_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The RFC 6902 operations that turn ``before`` into ``after``."""
    operations: list[dict[str, Any]] = jsonpatch.make_patch(dict(before), dict(after)).patch
    return operations
