"""The chart renders valid, restricted objects for the defaults and every ci/*-values.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

import sidecar
from sidecar.errors import ConfigError
from tests.chart.rendering import (
    CHART_DIR,
    CI_VALUES,
    CRD_KINDS,
    NAMESPACE,
    RELEASE,
    ROOT,
    Rendered,
    is_injector,
    load_rendered_config,
    pod_containers,
    render,
    restricted_problems,
    validate_objects,
    values_from,
)

CASES = [None, *CI_VALUES]
IDS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
FULLNAME = f"{RELEASE}-token-sidecar"
EXAMPLE = values_from(CHART_DIR / "ci" / "example-values.yaml")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sidecar's loader reads these; the rendered file alone must be enough.
    for name in ("VAULT_ADDR", "VAULT_CACERT", "VAULT_NAMESPACE", "VAULT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def with_values(base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """``base`` deep-merged with ``overrides`` (keys as dotted paths)."""
    values = copy.deepcopy(base)
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


def mode_of(values: dict[str, Any]) -> str:
    mode: str = values.get("sidecar", {}).get("mode", "native")
    return mode


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("values_file", CASES, ids=IDS)
def test_lints_cleanly(values_file: Path | None) -> None:
    values = values_from(values_file)
    kube = "v1.29.0" if mode_of(values) == "native" else "v1.25.0"
    report = helm_python.lint(CHART_DIR, values, strict=True, kube_version=kube)
    assert report["errors"] == []
    # Severity 1 is "info" (only "icon is recommended"); nothing at warning level or above.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values_file", CASES, ids=IDS)
def test_objects_are_valid_for_oldest_and_newest_kubernetes(values_file: Path | None) -> None:
    values = values_from(values_file)
    rendered = render(values)
    assert validate_objects(rendered.objects, mode_of(values)) == []
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, obj["kind"]
        # The injector's objects have a name of their own, so no sidecar selector matches them.
        name = "token-sidecar-injector" if is_injector(obj) else "token-sidecar"
        assert labels.get("app.kubernetes.io/name") == name, obj["kind"]


def test_native_sidecar_objects_are_rejected_by_older_schemas() -> None:
    # The schema check above is meaningful: Container.restartPolicy appeared in 1.28 (alpha).
    problems = validate_objects(render(EXAMPLE).objects, "native")
    assert problems == []
    import kubernetes_validate  # noqa: PLC0415  # only this test needs the exception type

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(render(EXAMPLE).deployment, "1.27.0", strict=True)


@pytest.mark.parametrize("values_file", CASES, ids=IDS)
def test_every_pod_meets_pod_security_restricted(values_file: Path | None) -> None:
    rendered = render(values_from(values_file))
    pods = [d["spec"]["template"]["spec"] for d in rendered.all("Deployment")]
    pods += [p["spec"] for p in rendered.all("Pod")]
    assert pods
    for pod in pods:
        assert restricted_problems(pod) == []
        assert pod["automountServiceAccountToken"] is False
    for deployment in rendered.all("Deployment"):
        if is_injector(deployment):
            continue  # no sidecar of its own (tests/chart/test_injector.py)
        sidecar_sc = Rendered([deployment], "").sidecar["securityContext"]
        assert isinstance(sidecar_sc["runAsUser"], int)
        assert sidecar_sc["runAsUser"] > 0
        assert isinstance(sidecar_sc["runAsGroup"], int)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=IDS[1:])
def test_rendered_config_is_accepted_by_the_sidecar(values_file: Path) -> None:
    values = values_from(values_file)
    rendered = render(values)
    settings = load_rendered_config(rendered.config)
    token_dir = Path(values.get("tokens", {}).get("mountPath", "/var/run/tokens"))
    for credential in settings.credentials:
        assert credential.output_dir.is_relative_to(token_dir)
    assert settings.server.port == values.get("sidecar", {}).get("port", 8099)
    assert settings.journal.dir == Path("/var/run/token-sidecar/journal")
    if "Deployment" in rendered.kinds:
        # Every path the config names is on a volume the sidecar mounts.
        sidecar_mounts = [Path(m["mountPath"]) for m in rendered.sidecar["volumeMounts"]]
        paths = [c.output_dir for c in settings.credentials] + [settings.journal.dir]
        auth = settings.vault.auth
        paths += [p for p in (auth.role_id_file, auth.secret_id_file) if p]
        if auth.method in ("kubernetes", "jwt"):
            paths.append(auth.jwt_file)
        for path in paths:
            assert path is not None
            assert any(path.is_relative_to(m) for m in sidecar_mounts), path


def test_defaults_render_but_the_sidecar_needs_a_credential() -> None:
    rendered = render()
    with pytest.raises(ConfigError) as info:
        load_rendered_config(rendered.config)
    assert any(p.startswith("credentials") for p in info.value.problems)


def test_chart_fills_in_what_only_it_knows() -> None:
    config = render(EXAMPLE).config
    assert config["vault"]["auth"] == {
        "method": "kubernetes",
        "role": "my-app",
        "jwt_file": "/var/run/secrets/vault/token",
    }
    [credential] = config["credentials"]
    assert credential["output_dir"] == "/var/run/tokens/billing"
    assert credential["file_group"] == 65532
    assert config["server"] == {"address": "0.0.0.0:8099"}
    assert config["journal"] == {"dir": "/var/run/token-sidecar/journal"}
    assert "events" not in config
    # The role defaults to the full name, the Vault role NOTES tells you to create.
    defaults = with_values(EXAMPLE, **{"config.vault.auth": {"method": "kubernetes"}})
    assert render(defaults).config["vault"]["auth"]["role"] == FULLNAME


def test_unset_keys_are_left_to_the_sidecar() -> None:
    values = with_values(
        EXAMPLE, **{"config.vault.namespace": "", "config.refresh": {}, "config.http": {}}
    )
    config = render(values).config
    assert "namespace" not in config["vault"]
    assert "refresh" not in config
    assert "http" not in config


def test_token_volume_is_in_memory_and_read_only_in_the_app() -> None:
    rendered = render(EXAMPLE)
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes["token-sidecar-tokens"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert volumes["token-sidecar-journal"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    app_mounts = mounts(rendered.app)
    assert app_mounts["token-sidecar-tokens"] == {
        "name": "token-sidecar-tokens",
        "mountPath": "/var/run/tokens",
        "readOnly": True,
    }
    # Only the token volume reaches the app: no journal, no Vault login token, no config.
    assert set(app_mounts) == {"token-sidecar-tokens"}
    sidecar_mounts = mounts(rendered.sidecar)
    assert not sidecar_mounts["token-sidecar-tokens"].get("readOnly", False)
    assert not sidecar_mounts["token-sidecar-journal"].get("readOnly", False)
    assert sidecar_mounts["token-sidecar-config"]["readOnly"] is True
    assert sidecar_mounts["token-sidecar-vault-jwt"]["readOnly"] is True


def test_vault_login_uses_a_projected_token_with_audience_and_expiry() -> None:
    rendered = render(EXAMPLE)
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    [source] = volumes["token-sidecar-vault-jwt"]["projected"]["sources"]
    assert source["serviceAccountToken"] == {
        "audience": "vault",
        "expirationSeconds": 3600,
        "path": "token",
    }
    assert mounts(rendered.sidecar)["token-sidecar-vault-jwt"]["mountPath"] == (
        "/var/run/secrets/vault"
    )
    assert rendered.pod["serviceAccountName"] == "my-app"
    assert rendered.one("ServiceAccount")["automountServiceAccountToken"] is False
    custom = render(
        with_values(
            EXAMPLE,
            **{
                "serviceAccountToken.audience": "https://vault.example",
                "serviceAccountToken.expirationSeconds": 7200,
            },
        )
    )
    volumes = {v["name"]: v for v in custom.pod["volumes"]}
    [source] = volumes["token-sidecar-vault-jwt"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "https://vault.example"
    assert source["serviceAccountToken"]["expirationSeconds"] == 7200


def test_native_mode_holds_the_app_until_the_first_token() -> None:
    rendered = render(EXAMPLE)
    [sidecar_container] = rendered.pod["initContainers"]
    assert sidecar_container["name"] == "token-sidecar"
    assert sidecar_container["restartPolicy"] == "Always"
    startup = sidecar_container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": 8099}
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 60
    assert sidecar_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar_container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert [c["name"] for c in rendered.pod["containers"]] == ["app"]
    assert sidecar_container["args"] == ["run", "--config", "/etc/token-sidecar/config.yaml"]


def test_example_app_only_without_an_app_image() -> None:
    example = render(EXAMPLE).app
    assert example["image"] == "busybox:1.36.1"
    assert example["command"] == ["sh", "-c"]
    assert "/var/run/tokens/*/" in example["args"][0]
    # Your image runs its own entrypoint, with no trace of the example.
    image = {"repository": "registry.example/my-app", "tag": "2.4.1"}
    app = render(with_values(EXAMPLE, **{"app.image": image})).app
    assert app["image"] == "registry.example/my-app:2.4.1"
    for key in ("command", "args", "resources"):
        assert key not in app, key


def test_native_sidecar_runs_before_extra_init_containers() -> None:
    extra = {"name": "migrate", "image": "registry.example/migrate:1"}
    rendered = render(with_values(EXAMPLE, initContainers=[extra]))
    assert [c["name"] for c in rendered.pod["initContainers"]] == ["token-sidecar", "migrate"]


def test_classic_mode_is_a_regular_container() -> None:
    rendered = render(with_values(EXAMPLE, **{"sidecar.mode": "classic"}))
    assert "initContainers" not in rendered.pod
    names = [c["name"] for c in rendered.pod["containers"]]
    assert names == ["app", "token-sidecar"]
    assert "restartPolicy" not in rendered.sidecar
    assert rendered.sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert validate_objects(rendered.objects, "classic") == []


def test_sidecar_has_requests_and_limits() -> None:
    resources = render(EXAMPLE).sidecar["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


def test_config_checksum_rolls_pods_only_when_config_changes() -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = render(values).deployment["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/token-sidecar-config"]
        return value

    base = checksum(EXAMPLE)
    assert len(base) == 64
    assert checksum(with_values(EXAMPLE, replicas=1, podLabels={"team": "a"})) == base
    assert checksum(with_values(EXAMPLE, **{"config.log": {"level": "debug"}})) != base


def test_workload_disabled_renders_only_supporting_objects() -> None:
    values = values_from(CHART_DIR / "ci" / "supporting-only-values.yaml")
    rendered = render(values)
    assert "Deployment" not in rendered.kinds
    assert {"ConfigMap", "ServiceAccount", "Service"} <= rendered.kinds
    assert rendered.one("ServiceAccount")["metadata"]["name"] == "my-app"
    assert rendered.one("Service")["spec"]["selector"] == {"app.kubernetes.io/name": "my-app"}


def test_service_targets_the_sidecar_port_by_number() -> None:
    rendered = render(with_values(EXAMPLE, **{"sidecar.port": 9100}))
    [port] = rendered.one("Service")["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["targetPort"] == 9100
    assert rendered.sidecar["ports"][0]["containerPort"] == 9100
    assert rendered.sidecar["startupProbe"]["httpGet"]["port"] == 9100
    assert rendered.config["server"]["address"] == "0.0.0.0:9100"
    assert rendered.one("Service")["spec"]["selector"] == {
        "app.kubernetes.io/name": "token-sidecar",
        "app.kubernetes.io/instance": RELEASE,
    }


def test_observability_objects() -> None:
    values = values_from(CHART_DIR / "ci" / "observability-values.yaml")
    rendered = render(values)
    assert rendered.kinds >= CRD_KINDS
    selector = {"app.kubernetes.io/name": "token-sidecar", "app.kubernetes.io/instance": RELEASE}

    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s"} | {
        "scrapeTimeout": "10s"
    }

    pod_monitor = rendered.one("PodMonitor")
    assert pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert pod_monitor["spec"]["selector"]["matchLabels"] == selector
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["metricRelabelings"][0]["action"] == "keep"

    rule = rendered.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((CHART_DIR / "files" / "token-sidecar-rules.yaml").read_text())
    slo = yaml.safe_load(
        (ROOT / "manifests" / "prometheus" / "token-sidecar-slo-rules.yaml").read_text()
    )
    assert rule["spec"] == {"groups": source["groups"] + slo["groups"]}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert isinstance(group["rules"], list)
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str)

    dashboard = rendered.one("ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    [(key, text)] = dashboard["data"].items()
    assert key.endswith(".json")
    expected = (CHART_DIR / "files" / "token-sidecar-dashboard.json").read_text()
    assert yaml.safe_load(text) == yaml.safe_load(expected)


def test_events_get_rbac_and_an_api_token_in_the_sidecar_only() -> None:
    rendered = render(with_values(EXAMPLE, **{"events.enabled": True}))
    role = rendered.one("Role")
    assert role["rules"] == [
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
    ]
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "my-app", "namespace": NAMESPACE}
    ]
    assert rendered.config["events"] == {"enabled": True}
    api = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mounts(rendered.sidecar)["token-sidecar-kube-api"]["mountPath"] == api
    assert "token-sidecar-kube-api" not in mounts(rendered.app)
    assert rendered.pod["automountServiceAccountToken"] is False
    env = {item["name"]: item for item in rendered.sidecar["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    without = render(EXAMPLE)
    assert "Role" not in without.kinds
    assert "token-sidecar-kube-api" not in mounts(without.sidecar)
    assert "NODE_NAME" not in {item["name"] for item in without.sidecar["env"]}


def test_approle_reads_its_secret_from_a_mounted_secret() -> None:
    rendered = render(values_from(CHART_DIR / "ci" / "approle-values.yaml"))
    auth = rendered.config["vault"]["auth"]
    assert auth == {
        "method": "approle",
        "role_id_file": "/var/run/secrets/vault-approle/role_id",
        "secret_id_file": "/var/run/secrets/vault-approle/secret_id",
    }
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    assert volumes["token-sidecar-approle"]["secret"] == {"secretName": "my-app-approle"}
    assert "token-sidecar-vault-jwt" not in volumes
    assert "token-sidecar-approle" not in mounts(rendered.app)


def test_no_secret_value_reaches_a_config_map() -> None:
    for values_file in CI_VALUES:
        rendered = render(values_from(values_file))
        for config_map in rendered.all("ConfigMap"):
            for text in config_map.get("data", {}).values():
                for word in ("client_secret:", "refresh_token:", "secret_id:", "private_key:"):
                    assert word not in text, (values_file.name, word)


def cred(name: str = "a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "kv_path": "x", "issuer": "https://idp.example"} | extra


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"config.credentials": [cred(output_dir="/etc/tokens")]}, "below tokens.mountPath"),
        ({"config.credentials": [cred(output_dir="/var/run/tokens/../x")]}, "below tokens"),
        ({"config.credentials": [cred(), cred()]}, "duplicate name"),
        ({"config.server": {"address": "0.0.0.0:9000"}}, "must end in :8099"),
        ({"config.vault.auth": {"method": "approle"}}, "needs sidecar.approle.secretName"),
        ({"monitoring.serviceMonitor.enabled": True, "service.enabled": False}, "service.enabled"),
    ],
    ids=["output-dir-outside", "output-dir-escapes", "duplicate", "port", "approle", "monitor"],
)
def test_combinations_that_cannot_work_stop_the_render(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(with_values(EXAMPLE, **overrides))


def test_restricted_check_catches_a_weakened_pod() -> None:
    weakened = with_values(EXAMPLE, **{"sidecar.securityContext.allowPrivilegeEscalation": True})
    problems = restricted_problems(render(weakened).pod)
    assert problems == ["container token-sidecar: allowPrivilegeEscalation false"]


def test_server_address_may_change_the_host_but_not_the_port() -> None:
    config = render(with_values(EXAMPLE, **{"config.server": {"address": "[::]:8099"}})).config
    assert config["server"]["address"] == "[::]:8099"


def test_image_defaults_follow_the_sidecar_version() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert chart["appVersion"] == sidecar.__version__
    assert values["sidecar"]["image"]["tag"] == chart["appVersion"]
    rendered = render(EXAMPLE)
    assert rendered.sidecar["image"] == f"token-sidecar:{sidecar.__version__}"
    digest = "sha256:" + "a" * 64
    pinned = render(with_values(EXAMPLE, **{"sidecar.image.digest": digest}))
    assert pinned.sidecar["image"] == f"token-sidecar@{digest}"


def test_containers_have_no_duplicate_mounts_or_volumes() -> None:
    for values_file in CI_VALUES:
        rendered = render(values_from(values_file))
        for deployment in rendered.all("Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            names = [v["name"] for v in pod["volumes"]]
            assert len(names) == len(set(names))
            for c in pod_containers(pod):
                paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
                assert len(paths) == len(set(paths)), c["name"]
                assert {m["name"] for m in c.get("volumeMounts", [])} <= set(names)
