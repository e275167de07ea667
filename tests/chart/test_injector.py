"""The chart's injector (injector.enabled): its objects rendered with Helm's engine, validated,
and put to work: the rendered config runs the real injector, the Helm-generated certificate is
verified against the webhook's caBundle, and a pod it injects is valid and restricted."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml

from sidecar.injector.app import Flags, Injector, load_config
from tests.chart.rendering import (
    CHART_DIR,
    NAMESPACE,
    Rendered,
    is_injector,
    render,
    validate_objects,
    values_from,
)
from tests.chart.test_render import with_values
from tests.injector.support import apply, fixture, pod_review, schema_problems
from tests.support.podsecurity import restricted_violations

VALUES = values_from(CHART_DIR / "ci" / "injector-values.yaml")
NAME = "shop-token-sidecar-injector"
SELF_LABEL = "token-sidecar.io/injector"


def injector_objects(rendered: Rendered) -> list[dict[str, Any]]:
    return [obj for obj in rendered.objects if is_injector(obj)]


def webhook_of(rendered: Rendered) -> dict[str, Any]:
    [configuration] = rendered.all("MutatingWebhookConfiguration")
    [webhook] = configuration["webhooks"]
    return {"configuration": configuration, **webhook}


def injector_config(rendered: Rendered, tmp_path: Path, flags: Flags | None = None) -> Any:
    [config_map] = [c for c in rendered.all("ConfigMap") if is_injector(c)]
    path = tmp_path / "injector.yaml"
    path.write_text(config_map["data"]["injector.yaml"], encoding="utf-8")
    return load_config(path, flags or Flags())


def test_disabled_by_default() -> None:
    rendered = render(values_from(CHART_DIR / "ci" / "example-values.yaml"))
    assert injector_objects(rendered) == []
    assert "MutatingWebhookConfiguration" not in rendered.kinds


def test_objects_are_valid_and_complete() -> None:
    rendered = render(VALUES)
    objects = injector_objects(rendered)
    assert validate_objects(objects, "native") == []
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    # No RBAC at all for the injector: it calls no Kubernetes API.
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        assert not [o for o in rendered.all(kind) if is_injector(o)]


def test_webhook_configuration() -> None:
    rendered = render(VALUES)
    webhook = webhook_of(rendered)
    assert webhook["name"] == "inject.token-sidecar.io"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["sideEffects"] == "None"
    assert 1 <= webhook["timeoutSeconds"] <= 10
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["namespaceSelector"]["matchLabels"] == {"token-sidecar.io/injection": "enabled"}
    assert {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "kube-public"],
    } in webhook["namespaceSelector"]["matchExpressions"]
    assert webhook["objectSelector"] == {
        "matchExpressions": [{"key": SELF_LABEL, "operator": "DoesNotExist"}]
    }
    # The injector's own pods carry the label the objectSelector excludes.
    pod_labels = rendered.injector["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[SELF_LABEL] == "true"
    # The client config reaches the Service, whose 443 leads to the container's webhook port.
    service = webhook["clientConfig"]["service"]
    assert service == {"name": NAME, "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    [svc] = [s for s in rendered.all("Service") if s["metadata"]["name"] == NAME]
    [https] = [p for p in svc["spec"]["ports"] if p["port"] == 443]
    [container] = rendered.injector["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert https["targetPort"] == "webhook"
    assert ports["webhook"] == 8443
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_injector_pods_are_restricted_replicated_and_own_nothing() -> None:
    rendered = render(VALUES)
    deployment = rendered.injector
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert restricted_violations(pod) == []
    spec = pod["spec"]
    assert spec["serviceAccountName"] == NAME
    assert spec["automountServiceAccountToken"] is False
    [account] = [a for a in rendered.all("ServiceAccount") if is_injector(a)]
    assert account["metadata"]["name"] == NAME
    assert account["automountServiceAccountToken"] is False
    [budget] = rendered.all("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # The sidecar's Service and Deployment never select the injector's pods.
    sidecar_selector = rendered.deployment["spec"]["selector"]["matchLabels"]
    assert not sidecar_selector.items() <= pod["metadata"]["labels"].items()
    one = render(with_values(VALUES, **{"injector.replicas": 1}))
    assert "PodDisruptionBudget" not in one.kinds
    assert "injector.replicas is 1" in one.notes


def test_rendered_config_runs_the_injector_with_the_charts_sidecar_values(tmp_path: Path) -> None:
    values = with_values(
        VALUES,
        **{
            "sidecar.mode": "classic",
            "sidecar.port": 9100,
            "sidecar.image": {"repository": "registry.example/ts", "tag": "1.2.3"},
            "sidecar.resources": {"requests": {"cpu": "20m", "memory": "80Mi"}},
            "tokens.sizeLimit": "2Mi",
            "serviceAccountToken.audience": "https://vault.example",
        },
    )
    config = injector_config(render(values), tmp_path)
    sidecar = config.injector.sidecar
    assert (sidecar.image, sidecar.mode, sidecar.port) == (
        "registry.example/ts:1.2.3",
        "classic",
        9100,
    )
    assert (sidecar.resources.requests.cpu, sidecar.resources.requests.memory) == ("20m", "80Mi")
    assert sidecar.resources.limits.cpu == "500m"  # Helm merges the chart's default limits
    assert sidecar.tokens_size_limit == "2Mi"
    assert sidecar.audience == "https://vault.example"
    assert config.vault.settings.address == "https://vault.vault.svc:8200"
    assert config.vault.role == "apps"
    assert str(config.injector.tls_cert_file) == "/etc/token-sidecar-injector/tls/tls.crt"


def test_pod_injected_with_the_charts_config_is_valid_and_restricted(tmp_path: Path) -> None:
    from sidecar.injector.review import review  # noqa: PLC0415

    config = injector_config(render(VALUES), tmp_path)
    for path in sorted((Path(__file__).parents[1] / "injector" / "fixtures").glob("*.yaml")):
        body, _ = fixture(path)
        outcome = review(body, config)
        assert outcome.decision == "injected", outcome.problems
        pod = apply(body, outcome)
        assert schema_problems(pod) == []
        assert restricted_violations(pod) == []
    # The default role reaches pods that name none.
    outcome = review(
        pod_review(
            {
                "token-sidecar.io/inject": "true",
                "token-sidecar.io/credential-a": "apps/a",
                "token-sidecar.io/token-endpoint-a": "https://idp.example/token",
            }
        ),
        config,
    )
    assert outcome.decision == "injected"


def test_helm_generated_certificate_is_trusted_through_the_ca_bundle(tmp_path: Path) -> None:
    rendered = render(VALUES)
    [secret] = [s for s in rendered.all("Secret") if is_injector(s)]
    assert secret["type"] == "kubernetes.io/tls"
    webhook = webhook_of(rendered)
    ca_bundle = base64.b64decode(webhook["clientConfig"]["caBundle"])
    assert ca_bundle == base64.b64decode(secret["data"]["ca.crt"])
    volume = next(
        v for v in rendered.injector["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    key.write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    flags = Flags("127.0.0.1:0", cert, key, "127.0.0.1:0")
    config = injector_config(rendered, tmp_path, flags)
    body, _ = fixture(
        sorted((Path(__file__).parents[1] / "injector" / "fixtures").glob("*.yaml"))[0]
    )

    async def test() -> None:
        server = Injector(config)
        await server.start()
        try:
            verify = ssl.create_default_context(cadata=ca_bundle.decode())
            async with httpx.AsyncClient(verify=verify) as http:
                # The name the API server uses for the Service, as it verifies it.
                answer = await http.post(
                    f"https://127.0.0.1:{server.webhook.port}/mutate",
                    json=body,
                    extensions={"sni_hostname": f"{NAME}.{NAMESPACE}.svc"},
                )
                assert answer.status_code == 200
                assert answer.json()["response"]["allowed"] is True
                with pytest.raises(httpx.ConnectError):  # a name it was not issued for
                    await http.post(
                        f"https://127.0.0.1:{server.webhook.port}/mutate",
                        json=body,
                        extensions={"sni_hostname": "elsewhere.example"},
                    )
        finally:
            await server.close()

    asyncio.run(test())


def test_cert_manager_issues_and_injects_the_ca() -> None:
    rendered = render(with_values(VALUES, **{"injector.tls.source": "certManager"}))
    assert not [s for s in rendered.all("Secret") if is_injector(s)]
    webhook = webhook_of(rendered)
    assert "caBundle" not in webhook["clientConfig"]
    annotations = webhook["configuration"]["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{NAME}"
    certificates = {c["metadata"]["name"]: c for c in rendered.all("Certificate")}
    serving = certificates[NAME]
    assert serving["spec"]["issuerRef"] == {"name": f"{NAME}-ca", "kind": "Issuer"}
    assert f"{NAME}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    assert certificates[f"{NAME}-ca"]["spec"]["isCA"] is True
    issuers = {i["metadata"]["name"]: i["spec"] for i in rendered.all("Issuer")}
    assert issuers == {
        f"{NAME}-selfsigned": {"selfSigned": {}},
        f"{NAME}-ca": {"ca": {"secretName": f"{NAME}-ca"}},
    }
    volume = next(
        v for v in rendered.injector["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    assert volume["secret"]["secretName"] == serving["spec"]["secretName"]
    assert "subPath" not in next(
        m
        for m in rendered.injector["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        if m["name"] == "tls"
    )  # a renewed certificate reaches the running pod
    issuer_ref = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    own = render(
        with_values(
            VALUES,
            **{
                "injector.tls.source": "certManager",
                "injector.tls.certManager.issuerRef": issuer_ref,
            },
        )
    )
    assert [c["spec"]["issuerRef"] for c in own.all("Certificate")] == [issuer_ref]
    assert "Issuer" not in own.kinds


def test_operator_secret_needs_its_ca_bundle() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    rendered = render(
        with_values(
            VALUES, **{"injector.tls.secretName": "webhook-tls", "injector.tls.caBundle": pem}
        )
    )
    assert not [s for s in rendered.all("Secret") if is_injector(s)]
    webhook = webhook_of(rendered)
    assert base64.b64decode(webhook["clientConfig"]["caBundle"]).decode() == pem
    volume = next(
        v for v in rendered.injector["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"
    )
    assert volume["secret"]["secretName"] == "webhook-tls"
    with pytest.raises(helm_python.HelmRenderError, match=r"injector\.tls\.caBundle"):
        render(with_values(VALUES, **{"injector.tls.secretName": "webhook-tls"}))


@pytest.mark.parametrize(
    "overrides",
    [
        {"injector.webhook.timeoutSeconds": 11},
        {"injector.webhook.failurePolicy": "Sometimes"},
        {"injector.tls.source": "vault"},
        {"injector.replicas": 0},
        {"injector.typo": True},
        {"injector.webhook.typo": True},
        {"injector.tls.helm.typo": True},
    ],
)
def test_schema_rejects_mistakes(overrides: dict[str, Any]) -> None:
    [(dotted, _)] = overrides.items()
    with pytest.raises(helm_python.HelmValuesError, match="/".join(dotted.split(".")[:-1])):
        render(with_values(VALUES, **overrides))


def test_login_methods_a_pod_cannot_use_stop_the_render() -> None:
    values = with_values(
        VALUES,
        **{
            "config.vault.auth": {"method": "token", "token_file": "/t"},
        },
    )
    with pytest.raises(helm_python.HelmRenderError, match=r"injector\.enabled needs config\.vault"):
        render(values)


def test_lints_cleanly() -> None:
    report = helm_python.lint(CHART_DIR, VALUES, strict=True, kube_version="v1.29.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_notes_tell_how_to_opt_in() -> None:
    notes = render(VALUES).notes
    assert "kubectl label namespace <namespace> token-sidecar.io/injection=enabled" in notes
    assert '"token-sidecar.io/inject": "true"' in notes
    assert f"deployment/{NAME}" in notes
    ignore = render(with_values(VALUES, **{"injector.webhook.failurePolicy": "Ignore"})).notes
    assert "start without their sidecar" in ignore
    # The values file used here stays parseable YAML with the injector documented.
    assert (
        yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))["injector"][
            "enabled"
        ]
        is False
    )


def test_an_injector_only_release() -> None:
    values = {
        "workload": {"enabled": False},
        "service": {"enabled": False},
        "tests": {"enabled": False},
        "config": {"vault": {"address": "https://vault.vault.svc:8200"}},
        "injector": {"enabled": True, "defaultRole": "apps"},
    }
    rendered = render(values)
    assert validate_objects(rendered.objects, "native") == []
    assert [d["metadata"]["name"] for d in rendered.all("Deployment")] == [NAME]
    notes = rendered.notes
    assert "runs the injector only" in notes
    assert "config.credentials is empty" not in notes  # the sidecar's own steps do not apply
    assert "NEXT STEPS" not in notes
    assert "INJECTOR" in notes
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version="v1.29.0")
    assert report["errors"] == []
