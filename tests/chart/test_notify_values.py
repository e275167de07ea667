"""The chart's side of notify: the schema mirrors the sidecar's model, signal shares the
process namespace, and what renders is a configuration the sidecar itself accepts."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest
import yaml
from pydantic import BaseModel

from sidecar.config import (
    NotifyConfig,
    NotifyExecConfig,
    NotifyHttpConfig,
    NotifySignalConfig,
)
from tests.chart.rendering import CHART_DIR, load_rendered_config, render

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
NOTIFY = SCHEMA["properties"]["config"]["properties"]["credentials"]["items"]["properties"][
    "notify"
]
EXAMPLE = yaml.safe_load((CHART_DIR / "ci" / "example-values.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def with_notify(notify: dict[str, Any], **values: Any) -> dict[str, Any]:
    result = copy.deepcopy(EXAMPLE) | values
    result["config"]["credentials"][0]["notify"] = notify
    return result


@pytest.mark.parametrize(
    ("node", "model"),
    [
        (NOTIFY, NotifyConfig),
        (NOTIFY["properties"]["http"], NotifyHttpConfig),
        (NOTIFY["properties"]["signal"], NotifySignalConfig),
        (NOTIFY["properties"]["exec"], NotifyExecConfig),
    ],
)
def test_the_schema_has_exactly_the_sidecar_keys(
    node: dict[str, Any], model: type[BaseModel]
) -> None:
    assert set(node["properties"]) == set(model.model_fields)
    assert node["additionalProperties"] is False
    for key, child in node["properties"].items():
        default = model.model_fields[key].default
        if "default" in child:
            assert child["default"] == default, key


def test_signal_shares_the_process_namespace_and_the_config_loads() -> None:
    rendered = render(with_notify({"signal": {"pid_file": "/shared/app.pid"}}))
    assert rendered.pod["shareProcessNamespace"] is True
    settings = load_rendered_config(rendered.config)
    notify = settings.credentials[0].notify
    assert notify is not None and notify.signal is not None
    assert notify.signal.signal == "SIGHUP"


def test_other_methods_leave_the_process_namespace_alone() -> None:
    rendered = render(with_notify({"http": {"url": "http://127.0.0.1:8080/token-changed"}}))
    assert "shareProcessNamespace" not in rendered.pod
    assert load_rendered_config(rendered.config).credentials[0].notify is not None
    assert "shareProcessNamespace" not in render(EXAMPLE).pod
    assert render(copy.deepcopy(EXAMPLE) | {"shareProcessNamespace": True}).pod[
        "shareProcessNamespace"
    ]


@pytest.mark.parametrize(
    "notify",
    [
        pytest.param({}, id="no-method"),
        pytest.param({"http": {"url": "http://app.example/hook"}}, id="http-not-loopback"),
        pytest.param({"signal": {"pid_file": "/p", "signal": "SIGKILL"}}, id="signal-kill"),
        pytest.param({"signal": {"pid_file": "relative.pid"}}, id="relative-pid-file"),
        pytest.param({"exec": {"command": []}}, id="empty-command"),
        pytest.param({"exec": {"command": "reload --all"}}, id="command-as-string"),
        pytest.param({"http": {"url": "http://127.0.0.1/", "retries": 3}}, id="typo"),
    ],
)
def test_the_schema_rejects(chart: helm_python.Chart, notify: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(with_notify(notify))
