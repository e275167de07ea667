"""Prometheus and promtool for the observability tests, and the shipped files they check.

The binaries come from the Debian package ``prometheus`` (Prometheus 2.42); a missing binary
fails the test with the command that installs it, never skips it.

:func:`shorten_for` is the one documented way the end-to-end test bends the shipped rules:
it lowers every ``for:`` duration so that a test can watch alerts fire in seconds. Expressions
and thresholds are kept exactly as shipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.deployment import free_port

__all__ = [
    "DASHBOARD_FILE",
    "ROOT",
    "RULES_FILE",
    "RULES_TEST_FILE",
    "PrometheusServer",
    "ScrapeTarget",
    "dashboard_queries",
    "require",
    "runnable_query",
    "shorten_for",
]

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "manifests" / "prometheus" / "token-sidecar-rules.yaml"
RULES_TEST_FILE = ROOT / "manifests" / "prometheus" / "tests" / "token-sidecar-rules.test.yaml"
DASHBOARD_FILE = ROOT / "manifests" / "grafana" / "token-sidecar-dashboard.json"

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def require(binary: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fail the test when it is not installed."""
    found = shutil.which(binary)
    if found is None:
        pytest.fail(
            f"{binary} not found: install the Debian package prometheus "
            "(apt-get install -y prometheus), which provides prometheus and promtool"
        )
    return found


def _seconds(duration: str) -> int:
    match = _DURATION.match(duration)
    if not duration or match is None:
        raise ValueError(f"unsupported duration {duration!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def shorten_for(rules_text: str, longest: str = "1s") -> str:
    """The rule file with every ``for:`` longer than ``longest`` lowered to it.

    Only ``for:`` changes: expressions, thresholds, labels and annotations stay as shipped, so
    an alert that fires here fires on the same condition in production, just sooner.
    """
    document = yaml.safe_load(rules_text)
    limit = _seconds(longest)
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule and _seconds(rule["for"]) > limit:
                rule["for"] = longest
    return str(yaml.safe_dump(document, sort_keys=False))


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[str]:
    """Every PromQL query in a Grafana dashboard: panel targets and variable queries."""
    queries: list[str] = []
    for panel in _walk_panels(dashboard.get("panels", [])):
        queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.DOTALL)


def runnable_query(query: str) -> str:
    """Turn a dashboard query into plain PromQL, as Grafana would before sending it.

    ``label_values(selector, label)`` (a Grafana function) becomes
    ``count by (label) (selector)``; ``$__rate_interval`` and the other built-in intervals
    become ``1m``; every other variable (namespace, pod, credential) becomes ``.*``, the
    dashboard's "All" value.
    """
    match = _LABEL_VALUES.match(query.strip())
    if match is not None:
        query = f"count by ({match['label']}) ({match['selector']})"
    query = re.sub(r"\$\{?__\w+\}?", "1m", query)
    return re.sub(r"\$\{?\w+\}?", ".*", query)


@dataclass(frozen=True)
class ScrapeTarget:
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class PrometheusServer:
    """A real Prometheus on 127.0.0.1 with a temporary configuration and storage directory.

    Scrapes every ``interval`` and evaluates rules as often. Only the process this object
    started is ever signalled, by its pid.
    """

    def __init__(
        self,
        workdir: Path,
        targets: list[ScrapeTarget],
        rule_files: list[Path],
        *,
        job: str = "token-sidecar",
        interval: str = "1s",
    ) -> None:
        self.binary = require("prometheus")
        self.workdir = workdir
        self.port = free_port()
        self.targets = targets
        self.rule_files = rule_files
        self.job = job
        self.interval = interval
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)

    def write_config(self) -> Path:
        config = {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "static_configs": [
                        {"targets": [target.address], "labels": dict(target.labels)}
                        for target in self.targets
                    ],
                }
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout: float = 20.0) -> None:
        config = self.write_config()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.logs()}")
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        self.http.close()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _api(self, path: str, **params: str) -> Any:
        response = self.http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {response.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result; raises AssertionError when Prometheus refuses it."""
        data = self._api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) from ``/api/v1/alerts``."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._api("rules")["groups"]
        return groups

    def targets_up(self) -> bool:
        return any(float(s["value"][1]) == 1 for s in self.query(f'up{{job="{self.job}"}}'))

    def describe(self) -> str:
        return json.dumps(self.alerts(), indent=1)
