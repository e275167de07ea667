"""Golden AdmissionReviews: the answer's patch, applied with jsonpatch, gives a valid,
restricted pod whose sidecar configuration the sidecar's own loader accepts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.configload import load_settings
from sidecar.injector.review import BadReview, review
from tests.injector.support import (
    FIXTURES,
    apply,
    base_config,
    fixture,
    pod_review,
    run,
    schema_problems,
    sidecar_env,
)
from tests.support.podsecurity import restricted_violations

IDS = [path.stem for path in FIXTURES]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_TOKEN", "POD_NAME"):
        monkeypatch.delenv(name, raising=False)


def names(containers: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in containers]


def token_mount(container: dict[str, Any]) -> dict[str, Any] | None:
    found = [m for m in container.get("volumeMounts", []) if m["name"] == "token-sidecar-tokens"]
    return found[0] if found else None


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_fixture_is_injected_into_a_valid_restricted_pod(path: Path) -> None:
    body, expect = fixture(path)
    assert restricted_violations(body["request"]["object"]) == []  # the fixture itself
    outcome = run(body)
    assert outcome.decision == "injected", outcome.problems
    assert outcome.response["apiVersion"] == body["apiVersion"]
    assert outcome.response["kind"] == "AdmissionReview"
    assert outcome.response["response"]["uid"] == body["request"]["uid"]
    assert outcome.response["response"]["allowed"] is True

    pod = apply(body, outcome)
    assert schema_problems(pod) == []
    assert restricted_violations(pod) == []
    spec = pod["spec"]
    assert names(spec.get("initContainers", [])) == expect["initContainers"]
    assert names(spec["containers"]) == expect["containers"]
    everyone = spec.get("initContainers", []) + spec["containers"]
    for container in everyone:
        mount = token_mount(container)
        if container["name"] == "token-sidecar":
            assert mount == {"name": "token-sidecar-tokens", "mountPath": "/var/run/tokens"}
        elif container["name"] in expect["mounted"]:
            assert mount == {
                "name": "token-sidecar-tokens",
                "mountPath": "/var/run/tokens",
                "readOnly": True,
            }
        else:
            assert container["name"] in expect.get("not_mounted", []), container["name"]
            assert mount is None
    # Everything the pod had is still there, unchanged apart from the added mounts.
    original = body["request"]["object"]
    for key, value in original["metadata"].get("annotations", {}).items():
        assert pod["metadata"]["annotations"][key] == value
    assert pod["metadata"]["annotations"]["token-sidecar.io/status"] == "injected"
    assert pod["metadata"].get("labels") == original["metadata"].get("labels")
    for volume in original["spec"].get("volumes", []):
        assert volume in spec["volumes"]
    assert outcome.credentials == tuple(expect["credentials"])


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_injected_environment_is_accepted_by_the_sidecars_loader(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, expect = fixture(path)
    pod = apply(body, run(body))
    env = sidecar_env(pod)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # TOKEN_SIDECAR_CONFIG is empty: the cli loads the environment alone, as here.
    assert env["TOKEN_SIDECAR_CONFIG"] == ""
    settings = load_settings(None)
    assert [c.name for c in settings.credentials] == expect["credentials"]
    for credential in settings.credentials:
        assert str(credential.output_dir) == f"/var/run/tokens/{credential.name}"
    assert settings.vault.auth.method == "kubernetes"
    assert str(settings.vault.auth.jwt_file) == "/var/run/secrets/vault/token"
    assert settings.journal.dir is not None
    assert str(settings.journal.dir) == "/var/run/token-sidecar/journal"
    assert settings.server.port == 8099
    # The projected token the sidecar logs in with, with the Vault audience.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    projected = volumes["token-sidecar-vault-jwt"]["projected"]["sources"][0]
    assert projected["serviceAccountToken"]["audience"] == "vault"
    assert volumes["token-sidecar-tokens"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert volumes["token-sidecar-journal"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}


def test_annotations_reach_the_sidecars_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    body, _ = fixture(Path(__file__).parent / "fixtures" / "volumes-and-init.yaml")
    pod = apply(body, run(body))
    for name, value in sidecar_env(pod).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    assert settings.vault.address == "https://vault.vault.svc:8200"
    assert settings.vault.auth.role == "shop"
    assert settings.vault.auth.mount_path == "kubernetes-east"
    billing, reports = settings.credentials
    assert (billing.kv_mount, billing.kv_path) == ("kv-shop", "apps/shop/billing")
    assert billing.token_endpoint == "https://idp.example/oauth2/token"
    assert (billing.client_id, billing.client_auth) == ("shop", "client_secret_post")
    assert billing.scope == "billing.read billing.write"
    assert billing.resource == ["https://billing.example/api", "https://billing.example/v2"]
    assert billing.file_mode == 0o400
    assert billing.file_group == 2000  # the pod's fsGroup
    assert billing.required is True
    assert (reports.issuer, reports.audience) == (
        "https://login.example/tenant",
        "https://reports.example",
    )
    assert (reports.required, reports.file_group) == (False, 2000)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["resources"] == {
        "requests": {"cpu": "20m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "96Mi"},
    }


def test_native_sidecar_has_restart_policy_and_startup_probe() -> None:
    body, _ = fixture(FIXTURES[0])
    sidecar = apply(body, run(body))["spec"]["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8099}
    assert sidecar["args"] == ["run"]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert sidecar["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_classic_mode_for_older_clusters(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body, expect = fixture(path)
    config = base_config(
        sidecar={"image": "registry.example/token-sidecar:0.1.0", "mode": "classic"}
    )
    outcome = run(body, config)
    assert outcome.decision == "injected"
    assert any("classic" in warning for warning in outcome.warnings)
    pod = apply(body, outcome)
    assert schema_problems(pod, "classic", like=body["request"]["object"]) == []
    assert restricted_violations(pod) == []
    containers = pod["spec"]["containers"]
    assert names(containers) == ["token-sidecar", *expect["containers"]]
    assert "restartPolicy" not in containers[0]
    assert "token-sidecar" not in names(pod["spec"].get("initContainers", []))
    # kubectl logs and exec keep defaulting to the app, not the sidecar now listed first.
    default = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
    assert default == expect["containers"][0]


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_reinvocation_is_a_no_op(path: Path) -> None:
    body, _ = fixture(path)
    pod = apply(body, run(body))
    again = copy.deepcopy(body)
    again["request"]["object"] = pod
    outcome = run(again)
    assert outcome.decision == "skipped"
    assert outcome.reason == "already injected"
    assert "patch" not in outcome.response["response"]
    assert apply(again, outcome) == pod


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"namespace": "kube-system"}, "system namespace"),
        ({"namespace": "kube-public"}, "system namespace"),
        ({"operation": "UPDATE"}, "not a creation"),
        ({"kind": {"group": "", "version": "v1", "kind": "Service"}}, "not a pod"),
    ],
)
def test_requests_left_alone(change: dict[str, Any], reason: str) -> None:
    body = pod_review(
        {
            "token-sidecar.io/inject": "true",
            "token-sidecar.io/credential-a": "apps/a",
            "token-sidecar.io/token-endpoint-a": "https://idp.example/token",
        }
    )
    body["request"].update(change)
    outcome = run(body)
    assert (outcome.decision, outcome.reason) == ("skipped", reason)
    assert outcome.response["response"] == {"uid": "0000-test", "allowed": True}


def test_pods_that_are_not_pending_the_injector_and_unannotated_pods_are_left_alone() -> None:
    annotated = {
        "token-sidecar.io/inject": "true",
        "token-sidecar.io/credential-a": "apps/a",
        "token-sidecar.io/token-endpoint-a": "https://idp.example/token",
    }
    running = pod_review(annotated)
    running["request"]["object"]["status"] = {"phase": "Running"}
    assert run(running).reason == "not pending"
    pending = pod_review(annotated)
    pending["request"]["object"]["status"] = {"phase": "Pending"}
    assert run(pending).decision == "injected"
    itself = pod_review(annotated, labels={"token-sidecar.io/injector": "true"})
    assert run(itself).reason == "the injector itself"
    plain = run(pod_review({"team": "a"}))
    assert (plain.decision, plain.reason, plain.warnings) == ("skipped", "not annotated", ())
    off = run(pod_review({**annotated, "token-sidecar.io/inject": "false"}))
    assert off.decision == "skipped"
    assert "no sidecar" in off.warnings[0]
    assert off.response["response"]["warnings"] == list(off.warnings)


def test_warnings_flag_what_is_allowed_but_suspicious() -> None:
    spec = {
        "containers": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [{"containerPort": 8099}],
            }
        ]
    }
    outcome = run(
        pod_review(
            {
                "token-sidecar.io/inject": "true",
                "token-sidecar.io/credential-a": "secret/data/apps/a",
                "token-sidecar.io/token-endpoint-a": "http://idp.idp.svc:8080/token",
                "token-sidecar.io/allow-insecure-http-a": "true",
                "token-sidecar.io/required-a": "false",
            },
            spec=spec,
        )
    )
    assert outcome.decision == "injected"
    text = "\n".join(outcome.warnings)
    assert "token-sidecar.io/allow-insecure-http-a" in text
    assert "'data/' segment" in text
    assert "fsGroup" in text
    assert "no credential is required" in text
    assert "port 8099" in text
    assert outcome.response["response"]["warnings"] == list(outcome.warnings)


def test_default_role_comes_from_the_config_and_is_required() -> None:
    annotations = {
        "token-sidecar.io/inject": "true",
        "token-sidecar.io/credential-a": "apps/a",
        "token-sidecar.io/token-endpoint-a": "https://idp.example/token",
    }
    from sidecar.injector.settings import parse_settings  # noqa: PLC0415

    no_role = parse_settings({"vault": {"address": "https://vault.example"}})
    outcome = review(pod_review(annotations), no_role)
    assert outcome.decision == "denied"
    assert "token-sidecar.io/role" in outcome.response["response"]["status"]["message"]
    allowed = review(pod_review({**annotations, "token-sidecar.io/role": "r"}), no_role)
    assert allowed.decision == "injected"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v2", "request": {"uid": "1"}},
        {"kind": "Pod", "apiVersion": "admission.k8s.io/v1", "request": {"uid": "1"}},
        {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"},
        {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}},
    ],
)
def test_not_an_admission_review(body: Any) -> None:
    with pytest.raises(BadReview):
        review(body, base_config())


def test_patch_escapes_slash_and_tilde_in_keys() -> None:
    body, _ = fixture(Path(__file__).parent / "fixtures" / "odd-keys-and-selection.yaml")
    outcome = run(body)
    import base64  # noqa: PLC0415

    operations = json.loads(base64.b64decode(outcome.response["response"]["patch"]))
    paths = [op["path"] for op in operations]
    assert "/metadata/annotations/token-sidecar.io~1status" in paths
    pod = apply(body, outcome)
    assert pod["metadata"]["annotations"]["a~b/c~d"] == "~1/~0"
    assert pod["metadata"]["annotations"]["example.com/owner~id"] == "42"
    assert pod["metadata"]["labels"] == {"example.com/team~a": "payments"}


def test_client_credentials_grant_reaches_the_sidecar(monkeypatch: pytest.MonkeyPatch) -> None:
    body = pod_review(
        {
            "token-sidecar.io/inject": "true",
            "token-sidecar.io/credential-svc": "apps/svc/client",
            "token-sidecar.io/grant-svc": "client_credentials",
            "token-sidecar.io/client-auth-svc": "tls_client_auth",
            "token-sidecar.io/token-endpoint-svc": "https://idp.example/token",
        }
    )
    outcome = run(body)
    assert outcome.decision == "injected", outcome.problems
    for name, value in sidecar_env(apply(body, outcome)).items():
        monkeypatch.setenv(name, value)
    [credential] = load_settings(None).credentials
    assert (credential.grant, credential.client_auth) == ("client_credentials", "tls_client_auth")
    assert credential.kv_path == "apps/svc/client"  # the client's secret, certificate and key
