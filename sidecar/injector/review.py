"""``AdmissionReview`` in, ``AdmissionReview`` out: the injector's decision, without I/O.

:func:`review` answers in the version it was asked in (``admission.k8s.io/v1``, or ``v1beta1``
from an old API server), with the request's ``uid``. A pod is

- **skipped** (allowed, unchanged) when it is not a pod being created, lives in
  ``kube-system`` or ``kube-public``, is not ``Pending``, is the injector itself (label
  ``token-sidecar.io/injector``), is not annotated ``token-sidecar.io/inject: "true"``, or was
  injected already (``token-sidecar.io/status: injected``): re-admission is a no-op, so
  ``reinvocationPolicy: IfNeeded`` is safe;
- **denied** when an annotation is wrong, naming every annotation at fault, so that a pod
  never starts without the sidecar it asked for;
- **injected** otherwise: the patch adds the sidecar, configured entirely through
  ``TOKEN_SIDECAR_*`` environment variables that the sidecar's own schema has accepted here.

A request that is not an ``AdmissionReview`` at all raises :class:`BadReview` (the server
answers 400).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from sidecar.config import CredentialConfig, VaultConfig, check_url
from sidecar.injector.annotations import (
    ANNOTATION_FOR_FIELD,
    PREFIX,
    STATUS_INJECTED,
    Parsed,
    Problem,
    annotation,
    parse,
    quantity_value,
)
from sidecar.injector.patch import Injection, inject, json_patch
from sidecar.injector.settings import InjectorConfig, SidecarTemplate

__all__ = [
    "API_VERSIONS",
    "SELF_LABEL",
    "SYSTEM_NAMESPACES",
    "BadReview",
    "Decision",
    "Outcome",
    "review",
    "sidecar_env",
]

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public"})
SELF_LABEL = "token-sidecar.io/injector"
ENV = "TOKEN_SIDECAR_"

Decision = Literal["injected", "skipped", "denied"]


class BadReview(ValueError):
    """The body is not an AdmissionReview this injector can answer."""


@dataclass(frozen=True)
class Outcome:
    """The answer to send, and what it means (for the log event and the metrics)."""

    response: dict[str, Any]
    decision: Decision
    reason: str
    uid: str
    namespace: str
    pod: str
    credentials: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())


def _envelope(body: Any) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(body, Mapping):
        raise BadReview("the body must be a JSON object")
    version = body.get("apiVersion")
    if body.get("kind") != "AdmissionReview" or version not in API_VERSIONS:
        raise BadReview(f"expected kind AdmissionReview, apiVersion one of {list(API_VERSIONS)}")
    request = body.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise BadReview("request.uid is missing")
    return str(version), request


def _answer(version: str, uid: str, **response: Any) -> dict[str, Any]:
    return {
        "apiVersion": version,
        "kind": "AdmissionReview",
        "response": {"uid": uid, **response},
    }


def review(body: Any, config: InjectorConfig) -> Outcome:
    """Decide on one AdmissionReview; raise BadReview when it is not one."""
    version, request = _envelope(body)
    uid = str(request["uid"])
    pod = request.get("object")
    namespace = str(request.get("namespace") or "")
    metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = str(metadata.get("name") or f"{metadata.get('generateName') or ''}*")
    namespace = namespace or str(metadata.get("namespace") or "")

    def skip(reason: str, warnings: Sequence[str] = ()) -> Outcome:
        extra = {"warnings": list(warnings)} if warnings else {}
        response = _answer(version, uid, allowed=True, **extra)
        return Outcome(response, "skipped", reason, uid, namespace, name, (), tuple(warnings))

    reason = _skip_reason(request, pod, namespace, metadata)
    if reason is not None or not isinstance(pod, Mapping):
        return skip(reason or "not a pod")
    annotations = metadata.get("annotations")
    annotations = annotations if isinstance(annotations, Mapping) else {}
    parsed = parse(annotations)
    if parsed.status == STATUS_INJECTED:
        return skip("already injected")
    if not parsed.inject and not (parsed.problems and annotation("inject") in annotations):
        ours = any(str(key).startswith(PREFIX) for key in annotations)
        hint = (
            [f'{PREFIX}* annotations are set but {annotation("inject")} is not "true": no sidecar']
            if ours
            else []
        )
        return skip("not annotated", hint)

    problems = list(parsed.problems)
    injection, credentials, warnings = _plan(pod, parsed, config, problems)
    mutated: dict[str, Any] | None = None
    if not problems and injection is not None:
        result = inject(pod, injection, config.injector.sidecar)
        problems += result.problems
        warnings += result.warnings
        mutated = result.pod
    if problems or mutated is None:
        messages = tuple(dict.fromkeys(str(p) for p in problems))
        status = {"code": 400, "reason": "BadRequest", "message": _deny_message(messages)}
        response = _answer(version, uid, allowed=False, status=status)
        return Outcome(
            response, "denied", "bad annotation", uid, namespace, name, credentials, (), messages
        )
    patch = json_patch(pod, mutated)
    encoded = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    extra = {"warnings": warnings} if warnings else {}
    response = _answer(version, uid, allowed=True, patchType="JSONPatch", patch=encoded, **extra)
    return Outcome(
        response, "injected", "injected", uid, namespace, name, credentials, tuple(warnings)
    )


def _skip_reason(  # noqa: PLR0911  # one early answer per rule reads best
    request: Mapping[str, Any], pod: Any, namespace: str, metadata: Mapping[str, Any]
) -> str | None:
    """Why a request is none of the injector's business, or None when it is."""
    kind = request.get("kind")
    if not isinstance(pod, Mapping) or not (
        isinstance(kind, Mapping) and kind.get("kind") == "Pod" and not kind.get("group")
    ):
        return "not a pod"
    if request.get("operation") != "CREATE":
        return "not a creation"
    if request.get("subResource"):
        return "a subresource"
    if namespace in SYSTEM_NAMESPACES:
        return "system namespace"
    status = pod.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    if phase not in (None, "", "Pending"):
        return "not pending"
    labels = metadata.get("labels")
    if isinstance(labels, Mapping) and SELF_LABEL in labels:
        return "the injector itself"
    return None


def _deny_message(messages: Sequence[str]) -> str:
    return "token-sidecar injector: " + "; ".join(messages)


def _plan(
    pod: Mapping[str, Any], parsed: Parsed, config: InjectorConfig, problems: list[Problem]
) -> tuple[Injection | None, tuple[str, ...], list[str]]:
    """The injection the annotations ask for, checked by the sidecar's own schema."""
    template = config.injector.sidecar
    warnings = list(parsed.warnings)
    names = tuple(sorted(parsed.credentials))
    if not parsed.credentials and not parsed.problems:
        problems.append(
            Problem(
                annotation("inject"),
                f"no credential: add {annotation('credential', '<name>')} with its KV path",
            )
        )
    vault_env = _vault_env(parsed, config, problems)
    spec = pod.get("spec")
    security = spec.get("securityContext") if isinstance(spec, Mapping) else None
    fs_group = security.get("fsGroup") if isinstance(security, Mapping) else None
    credentials = [
        _credential(name, fields, template, fs_group, problems)
        for name, fields in sorted(parsed.credentials.items())
    ]
    resources = _resources(parsed, template, problems)
    if problems:
        return None, names, warnings
    if fs_group is None and not all("file_group" in c for c in credentials):
        warnings.append(
            "the pod sets no securityContext.fsGroup: the token files (mode 0440) belong to "
            f"group {template.run_as_group}; set fsGroup, or run the app in that group"
        )
    if not any(c.get("required", True) for c in credentials):
        warnings.append(
            "no credential is required: the sidecar reports ready, and the app starts, "
            "before any token exists"
        )
    env = sidecar_env(vault_env, credentials, template)
    uses_jwt = True  # both supported methods log in with the projected token
    injection = Injection(tuple(env), resources, parsed.containers, uses_jwt)
    return injection, names, warnings


def _vault_env(parsed: Parsed, config: InjectorConfig, problems: list[Problem]) -> dict[str, str]:
    """The vault settings for this pod, validated, as ``TOKEN_SIDECAR_VAULT__*`` values."""
    defaults = config.vault.settings
    template = config.injector.sidecar
    method = parsed.pod.get("auth-method", defaults.auth.method)
    mount = parsed.pod.get("auth-mount", defaults.auth.mount)
    role = parsed.pod.get("role", config.vault.role)
    address = parsed.pod.get("vault-address", defaults.address)
    if not role:
        problems.append(
            Problem(annotation("role"), "required: the injector's config names no default role")
        )
        return {}
    values: dict[str, Any] = {"address": address}
    for key in ("namespace", "ca_cert", "allow_insecure_http", "timeout_seconds"):
        if key in config.vault.explicit:
            values[key] = getattr(defaults, key)
    auth: dict[str, Any] = {
        "method": method,
        "role": role,
        "jwt_file": f"{template.jwt_mount_path}/token",
    }
    if mount:
        auth["mount"] = mount
    try:
        VaultConfig.model_validate({**values, "auth": auth})
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            message = error["msg"].removeprefix("Value error, ").removeprefix("address: ")
            message = message.replace(
                "set allow_insecure_http: true", "set vault.allow_insecure_http in its config"
            )
            where = "vault-address" if "vault-address" in parsed.pod else "inject"
            if where == "inject":
                message = f"the injector's default vault.address is rejected: {message}"
            problems.append(Problem(annotation(where), message))
        return {}
    env = {f"{ENV}VAULT__{key.upper()}": _env_value(value) for key, value in values.items()}
    env.update({f"{ENV}VAULT__AUTH__{key.upper()}": str(value) for key, value in auth.items()})
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _credential(
    name: str,
    fields: Mapping[str, Any],
    template: SidecarTemplate,
    fs_group: Any,
    problems: list[Problem],
) -> dict[str, Any]:
    credential = {**fields, "output_dir": f"{template.tokens_mount_path}/{name}"}
    if "file_group" not in credential and isinstance(fs_group, int) and fs_group >= 0:
        credential["file_group"] = fs_group
    endpoint, issuer = credential.get("token_endpoint"), credential.get("issuer")
    if endpoint is None and issuer is None:
        problems.append(
            Problem(
                annotation("token-endpoint", name),
                f"set it, or {annotation('issuer', name)} for discovery",
            )
        )
        return credential
    if endpoint is not None and issuer is not None:
        problems.append(
            Problem(
                annotation("issuer", name),
                f"set either it or {annotation('token-endpoint', name)}, not both",
            )
        )
        return credential
    allow_http = bool(credential.get("allow_insecure_http"))
    for key in ("token_endpoint", "issuer"):
        if credential.get(key) is not None:
            try:
                check_url(str(credential[key]), allow_http=allow_http, what=key)
            except ValueError as exc:
                message = str(exc).removeprefix(f"{key}: ")
                message = message.replace(
                    "set allow_insecure_http: true",
                    f'set {annotation("allow-insecure-http", name)}: "true"',
                )
                problems.append(Problem(annotation(ANNOTATION_FOR_FIELD[key], name), message))
                return credential
    try:
        CredentialConfig.model_validate(credential)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            message = error["msg"].removeprefix("Value error, ")
            if error["loc"]:
                key = str(error["loc"][0])
                where = ANNOTATION_FOR_FIELD.get(key, "credential")
                problems.append(Problem(annotation(where, name), message))
                continue
            # A rule across keys: each piece starts with the key it is about.
            for piece in message.split("; "):
                key, sep, rest = piece.partition(": ")
                if sep and key in ANNOTATION_FOR_FIELD:
                    problems.append(Problem(annotation(ANNOTATION_FOR_FIELD[key], name), rest))
                else:
                    problems.append(Problem(annotation("credential", name), piece))
    return credential


def _resources(
    parsed: Parsed, template: SidecarTemplate, problems: list[Problem]
) -> dict[str, dict[str, str]]:
    defaults = template.resources
    merged: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for kind in ("cpu", "memory"):
        request = parsed.resources.get(f"{kind}-request", getattr(defaults.requests, kind))
        limit = parsed.resources.get(f"{kind}-limit", getattr(defaults.limits, kind))
        if request:
            merged["requests"][kind] = request
        if limit:
            merged["limits"][kind] = limit
        if request and limit and quantity_value(request) > quantity_value(limit):
            blamed = f"{kind}-request" if f"{kind}-request" in parsed.resources else f"{kind}-limit"
            problems.append(
                Problem(
                    annotation(blamed),
                    f"the {kind} request ({request}) would exceed the limit ({limit})",
                )
            )
    return {kind: values for kind, values in merged.items() if values}


def sidecar_env(
    vault_env: Mapping[str, str],
    credentials: Sequence[Mapping[str, Any]],
    template: SidecarTemplate,
) -> list[dict[str, Any]]:
    """The sidecar's whole configuration as container environment variables."""

    def field_ref(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    env: list[dict[str, Any]] = [
        # The image names a config file this pod does not have: the environment is the config.
        {"name": "TOKEN_SIDECAR_CONFIG", "value": ""},
        {"name": "POD_NAME", "valueFrom": field_ref("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field_ref("metadata.namespace")},
    ]
    env += [{"name": key, "value": value} for key, value in sorted(vault_env.items())]
    env.append(
        {
            "name": f"{ENV}CREDENTIALS",
            "value": json.dumps(list(credentials), separators=(",", ":"), sort_keys=True),
        }
    )
    env.append({"name": f"{ENV}SERVER__ADDRESS", "value": f"0.0.0.0:{template.port}"})
    if template.journal:
        env.append({"name": f"{ENV}JOURNAL__DIR", "value": template.journal_mount_path})
    env.append({"name": f"{ENV}LOG__LEVEL", "value": template.log_level})
    return env
