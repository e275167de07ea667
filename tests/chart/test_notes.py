"""NOTES.txt prints the next steps with the real names and warns about risky combinations."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.rendering import CHART_DIR, NAMESPACE, RELEASE, render, values_from
from tests.chart.test_render import EXAMPLE, with_values


def warnings(values: dict[str, Any]) -> list[str]:
    notes = render(values).notes
    if "WARNINGS" not in notes:
        return []
    section = notes.split("WARNINGS", 1)[1].split("NEXT STEPS", 1)[0]
    return [line.strip()[2:] for line in section.splitlines() if line.strip().startswith("- ")]


def your_app(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a real app instead of the chart's example busybox."""
    return with_values(values, **{"app.image": {"repository": "registry.example/app", "tag": "1"}})


def test_safe_values_print_no_warning() -> None:
    assert warnings(your_app(EXAMPLE)) == []
    assert warnings(values_from(CHART_DIR / "ci" / "multi-credential-values.yaml")) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"config.credentials": []}, "config.credentials is empty"),
        ({"config.vault.address": ""}, "config.vault.address is not set"),
        ({"sidecar.mode": "classic"}, "app container may start before the first token"),
        (
            {"sidecar.securityContext.readOnlyRootFilesystem": False},
            "sidecar.securityContext.readOnlyRootFilesystem is not true",
        ),
        (
            {"app.securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": False}},
            "app.securityContext.readOnlyRootFilesystem is not true",
        ),
        (
            {"app.securityContext.allowPrivilegeEscalation": True},
            'app.securityContext does not meet Pod Security "restricted"',
        ),
        ({"sidecar.securityContext.runAsNonRoot": False}, "sidecar.securityContext does not meet"),
        ({"replicas": 3}, "replicas is 3"),
        ({"journal.enabled": False}, "journal.enabled is false"),
        ({"config.coordination": {"holder": "pod-a"}}, "config.coordination.holder is set"),
        ({"terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds (20)"),
        (
            {"config.refresh": {"shutdown_grace_seconds": 45}},
            "config.refresh.shutdown_grace_seconds (45)",
        ),
        ({"config.vault.allow_insecure_http": True}, "may cross the network unencrypted"),
        (
            {"config.credentials": [EXAMPLE["config"]["credentials"][0] | {"file_group": 4242}]},
            "file_group 4242 is not one of the sidecar's groups",
        ),
        (
            {"serviceAccount": {"create": False, "name": ""}},
            "default ServiceAccount",
        ),
        (
            {
                "fullnameOverride": "billing-agent",
                "monitoring": {
                    "podMonitor": {"enabled": True},
                    "prometheusRule": {"enabled": True},
                },
            },
            "TokenSidecarDown",
        ),
        ({"events.enabled": True}, "EXTRAS=kubernetes"),
    ],
    ids=[
        "no-credentials",
        "no-vault-address",
        "classic",
        "sidecar-writable-root",
        "app-writable-root",
        "app-escalation",
        "sidecar-not-non-root",
        "replicas",
        "no-journal",
        "shared-holder",
        "short-termination-grace",
        "long-shutdown-grace",
        "plain-http",
        "foreign-file-group",
        "default-service-account",
        "job-label",
        "events",
    ],
)
def test_risky_values_are_warned_about(overrides: dict[str, Any], expected: str) -> None:
    found = warnings(your_app(with_values(EXAMPLE, **overrides)))
    assert any(expected in w for w in found), found


def test_example_app_is_flagged() -> None:
    assert any("chart's example" in w for w in warnings(EXAMPLE))


def test_next_steps_use_the_real_paths_and_names() -> None:
    notes = render(values_from(CHART_DIR / "ci" / "multi-credential-values.yaml")).notes
    fullname = f"{RELEASE}-token-sidecar"
    # Policy: one pair of KV v2 paths per credential, with its own mount.
    assert 'path "kv/data/apps/my-app/billing"' in notes
    assert 'path "kv/metadata/apps/my-app/billing"' in notes
    assert 'path "secret/data/apps/my-app/orders"' in notes
    assert "vault policy write my-app-tokens" in notes
    # jwt role on its own mount, bound to this pod's service account and audience.
    assert "vault write auth/k8s-jwt/prod/role/my-app" in notes
    assert f"bound_subject=system:serviceaccount:{NAMESPACE}:{fullname}" in notes
    assert "bound_audiences=https://vault.example" in notes
    assert "vault kv put -mount=kv apps/my-app/billing refresh_token=@FILE" in notes
    assert "token-sidecar --config config.yaml seed --credential billing" in notes
    assert f"exec deploy/{fullname} -c token-sidecar -- token-sidecar check" in notes
    assert "ls -l /var/run/tokens/nested/reports" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes


def test_kubernetes_role_command() -> None:
    notes = render(EXAMPLE).notes
    assert "vault write auth/kubernetes/role/my-app" in notes
    assert "bound_service_account_names=my-app" in notes
    assert f"bound_service_account_namespaces={NAMESPACE}" in notes
    assert "audience=vault" in notes


def test_approle_steps_name_the_secret() -> None:
    notes = render(values_from(CHART_DIR / "ci" / "approle-values.yaml")).notes
    assert "create secret generic my-app-approle" in notes


def test_workload_disabled_explains_the_named_templates() -> None:
    notes = render(values_from(CHART_DIR / "ci" / "supporting-only-values.yaml")).notes
    assert "token-sidecar.container" in notes
    assert "service.selector" in notes
    assert "rollout status" not in notes
