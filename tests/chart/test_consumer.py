"""Another chart can put the sidecar in its own pod with token-sidecar's named templates.

The fixture chart in fixtures/consumer depends on this chart through a file:// dependency, the
way docs/install.md shows; the test resolves it in a copy (so nothing is written to the tree).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.chart.rendering import (
    CHART_DIR,
    ROOT,
    Rendered,
    load_rendered_config,
    render,
    restricted_problems,
    validate_objects,
)

FIXTURE = Path(__file__).parent / "fixtures" / "consumer"
RELATIVE_DEPENDENCY = "file://../../../../charts/token-sidecar"
RELEASE = "shop"


@pytest.fixture
def consumer(tmp_path: Path) -> Callable[..., Path]:
    """Copy the fixture chart, point its dependency at this chart, resolve it."""

    def make(templates: dict[str, str] | None = None) -> Path:
        chart = tmp_path / "consumer"
        shutil.copytree(FIXTURE, chart)
        # The fixture's relative path is right where it lives; the copy needs it absolute.
        assert (FIXTURE / RELATIVE_DEPENDENCY.removeprefix("file://")).resolve() == CHART_DIR
        manifest = chart / "Chart.yaml"
        manifest.write_text(
            manifest.read_text().replace(RELATIVE_DEPENDENCY, CHART_DIR.as_uri()),
        )
        for name, text in (templates or {}).items():
            (chart / "templates" / name).write_text(text)
        helm_python.dependency_update(chart)
        return chart

    return make


def by_template(chart: Path, values: dict[str, Any] | None = None) -> dict[str, Rendered]:
    with helm_python.Chart.load(chart) as loaded:
        rendered = loaded.render(values or {}, name=RELEASE, namespace="team-a")
    out: dict[str, Rendered] = {}
    for template, text in rendered.items():
        if not template.endswith("NOTES.txt"):
            out[template] = Rendered([d for d in yaml.safe_load_all(text) if d], "")
    return out


def everything(rendered: dict[str, Rendered]) -> Rendered:
    return Rendered([obj for r in rendered.values() for obj in r.objects], "")


def test_consumer_pod_carries_the_same_sidecar_as_the_chart(
    consumer: Callable[..., Path],
) -> None:
    rendered = by_template(consumer())
    all_objects = everything(rendered)
    assert validate_objects(all_objects.objects, "native") == []

    own = rendered["consumer/templates/deployment.yaml"].deployment
    pod = own["spec"]["template"]["spec"]
    assert restricted_problems(pod) == []
    [sidecar] = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"

    # What token-sidecar itself renders for the same values and release.
    fixture_values = yaml.safe_load((FIXTURE / "values.yaml").read_text())["token-sidecar"]
    reference = render(fixture_values | {"workload": {"enabled": True}}, release=RELEASE)
    assert sidecar == reference.sidecar
    assert pod["volumes"] == reference.pod["volumes"]
    app_mounts = pod["containers"][0]["volumeMounts"]
    assert app_mounts == reference.app["volumeMounts"]

    # Every name the pod refers to is an object the dependency rendered.
    config_map = all_objects.config_map
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["token-sidecar-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert pod["serviceAccountName"] == all_objects.one("ServiceAccount")["metadata"]["name"]
    selector = all_objects.one("Service")["spec"]["selector"]
    assert selector.items() <= own["spec"]["template"]["metadata"]["labels"].items()
    assert (
        "Deployment"
        not in everything(
            {k: v for k, v in rendered.items() if "/charts/token-sidecar/" in k}
        ).kinds
    )
    load_rendered_config(all_objects.config)


def test_consumer_pod_rolls_when_the_sidecar_config_changes(
    consumer: Callable[..., Path],
) -> None:
    chart = consumer()

    def checksum(values: dict[str, Any]) -> str:
        own = by_template(chart, values)["consumer/templates/deployment.yaml"].deployment
        value: str = own["spec"]["template"]["metadata"]["annotations"][
            "checksum/token-sidecar-config"
        ]
        return value

    debug = {"token-sidecar": {"config": {"log": {"level": "debug"}}}}
    assert checksum({}) != checksum(debug)


def test_classic_mode_in_the_consumer(consumer: Callable[..., Path]) -> None:
    chart = consumer()
    values = {"token-sidecar": {"sidecar": {"mode": "classic"}}}
    own = by_template(chart, values)["consumer/templates/deployment.yaml"].deployment
    pod = own["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["app", "token-sidecar"]
    assert validate_objects([own], "classic") == []


OLD_CLUSTER = """\
{{- $old := dict "KubeVersion" (dict "Version" "v1.28.5") }}
{{- $ts := dict "Values" (index .Values "token-sidecar") "Release" .Release "Capabilities" $old }}
initContainers:
  {{- include "token-sidecar.container" $ts | nindent 2 }}
"""


def test_native_mode_refuses_clusters_older_than_1_29(consumer: Callable[..., Path]) -> None:
    # helm-python-sdk renders with its own default Kubernetes version; a template that hands
    # the sidecar template an older cluster shows the guard a real `helm install` hits.
    chart = consumer({"old-cluster.yaml": OLD_CLUSTER})
    with pytest.raises(helm_python.HelmRenderError, match=r"needs Kubernetes >= 1\.29"):
        by_template(chart)
    classic = {"token-sidecar": {"sidecar": {"mode": "classic"}}}
    rendered = by_template(chart, classic)
    assert "consumer/templates/old-cluster.yaml" in rendered


def test_install_guide_shows_the_tested_template() -> None:
    guide = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    template = (FIXTURE / "templates" / "deployment.yaml").read_text(encoding="utf-8")
    assert f"```yaml\n{template}```" in guide
    values = (FIXTURE / "values.yaml").read_text(encoding="utf-8")
    documented = values.split("token-sidecar:\n", 1)[1]
    guide_values = guide.split("```yaml\ntoken-sidecar:\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(guide_values) == yaml.safe_load(documented)
