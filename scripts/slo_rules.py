"""The SLO recording and alert rules, generated from one definition of each objective.

Each :class:`Objective` names its SLI (how a bad event is counted), its target and its window.
Everything else follows from those: the error ratio recorded per credential and pod over every
window the alerts and the dashboard need, the error budget remaining, the burn rate, and the
multi-window, multi-burn-rate alerts of the Google SRE workbook ("Alerting on SLOs"):

=========  ==================  ====================  ==========================
severity   long window         short window          burn rate (30-day window)
=========  ==================  ====================  ==========================
page       1h                  5m                    14.4x (2 % of the budget)
page       6h                  30m                   6x    (5 % of the budget)
ticket     3d                  6h                    1x    (10 % of the budget)
=========  ==================  ====================  ==========================

A burn rate is the share of the budget a condition consumes, times the SLO window, over the
long window (0.02 * 720 h / 1 h = 14.4), so a different window keeps the same budget shares.
Thresholds stay visible in the expressions (``> (14.4 * (1 - 0.999))``): on-call reads the
target where the alert fires.

Two renderings come out of the same rules (``scripts/render_manifests.py`` writes both and
``--check`` fails CI when either drifts):

* the plain rule file with the default targets,
  ``manifests/prometheus/token-sidecar-slo-rules.yaml``;
* the chart's copy, ``charts/token-sidecar/files/token-sidecar-slo-rules.yaml``, where each
  target and the latency threshold is a placeholder the chart replaces with its values
  (``monitoring.slo.*``). It is plain text replacement, not a Helm template, so the alerts'
  own ``{{ $labels.pod }}`` templates need no escaping.

``scale`` divides every duration (windows, evaluation interval) for tests that cannot wait
hours: the real-Prometheus end-to-end test renders the rules with ``scale=60`` (5m becomes 5s,
1h becomes 1m) and proves the fast-burn alert against a real sidecar; thresholds stay as
shipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = [
    "ALERT_WINDOWS",
    "CHART_PLACEHOLDERS",
    "DEFAULT_LATENCY_THRESHOLD",
    "OBJECTIVES",
    "SLI_WINDOWS",
    "Objective",
    "alert_names",
    "render",
    "render_chart_copy",
    "rule_groups",
]

DAY = 86_400
SLI_WINDOWS = (300, 1800, 3600, 6 * 3600, DAY, 3 * DAY)
"""5m, 30m, 1h, 6h, 1d, 3d: every window an alert or the dashboard reads, from raw series."""

DEFAULT_LATENCY_THRESHOLD = "0.3"
"""Seconds; must be one of the duration histogram's buckets (sidecar.metrics.DURATION_BUCKETS)."""

RUNBOOKS = "https://github.com/token-sidecar/token-sidecar/blob/main/docs/runbooks.md"


@dataclass(frozen=True)
class AlertWindow:
    severity: str  # the label: critical pages, warning opens a ticket
    long: int  # seconds
    short: int
    budget_share: float  # of the whole window's budget, consumed over ``long``

    def burn_rate(self, slo_window: int) -> float:
        return round(self.budget_share * slo_window / self.long, 4)


ALERT_WINDOWS = {
    "FastBurn": (
        AlertWindow("critical", 3600, 300, 0.02),
        AlertWindow("critical", 6 * 3600, 1800, 0.05),
    ),
    "SlowBurn": (AlertWindow("warning", 3 * DAY, 6 * 3600, 0.10),),
}


@dataclass(frozen=True)
class Objective:
    slo: str  # the `slo` label value and the placeholder's key
    alert: str  # alert name stem: TokenSidecar<alert>FastBurn
    title: str
    target: float
    window: int  # seconds
    good: str  # what a good event is, for descriptions
    sli: Callable[[str, str], tuple[str, str, str]]
    """(range, latency threshold) -> PromQL: error ratio, bad events per second, all events."""

    @property
    def placeholder(self) -> str:
        return f"__TOKEN_SIDECAR_SLO_{self.slo.upper()}_TARGET__"


_REQUIRED = "\nand\ntoken_sidecar_credential_required == 1"
"""Only required credentials count for availability: an optional one may lack a token."""


def _availability(window: str, _threshold: str) -> tuple[str, str, str]:
    valid = f"avg_over_time(token_sidecar_token_valid[{window}])"
    return (
        f"(1 - {valid}){_REQUIRED}",
        f"(1 - {valid}){_REQUIRED}",
        f"(0 * {valid} + 1){_REQUIRED}",
    )


def _success(window: str, _threshold: str) -> tuple[str, str, str]:
    good = (
        f'sum without (outcome) (rate(token_sidecar_refresh_total{{outcome="success"}}[{window}]))'
    )
    total = f"sum without (outcome) (rate(token_sidecar_refresh_total[{window}]))"
    return (f"1 - (\n  {good}\n  / {total}\n)", f"{total}\n- {good}", total)


def _latency(window: str, threshold: str) -> tuple[str, str, str]:
    good = (
        "sum without (le) (\n"
        f'  rate(token_sidecar_refresh_duration_seconds_bucket{{le="{threshold}"}}[{window}])\n'
        ")"
    )
    total = f"rate(token_sidecar_refresh_duration_seconds_count[{window}])"
    indented = good.replace("\n", "\n  ")
    return (f"1 - (\n  {indented}\n  / {total}\n)", f"{total}\n- {good}", total)


OBJECTIVES = (
    Objective(
        slo="availability",
        alert="TokenAvailability",
        title="token availability",
        target=0.999,
        window=30 * DAY,
        good="a scrape finds a required credential's published token unexpired",
        sli=_availability,
    ),
    Objective(
        slo="refresh_success",
        alert="RefreshSuccess",
        title="refresh success",
        target=0.999,
        window=30 * DAY,
        good="a refresh succeeds (a request retried inside one refresh counts once)",
        sli=_success,
    ),
    Objective(
        slo="refresh_latency",
        alert="RefreshLatency",
        title="refresh latency",
        target=0.99,
        window=30 * DAY,
        good="a refresh attempt takes less than the latency threshold",
        sli=_latency,
    ),
)

LATENCY_PLACEHOLDER = "__TOKEN_SIDECAR_SLO_LATENCY_THRESHOLD__"
CHART_PLACEHOLDERS = {o.slo: o.placeholder for o in OBJECTIVES} | {
    "latency_threshold": LATENCY_PLACEHOLDER
}
"""What the chart replaces in its copy, by what it replaces it with."""


def duration(seconds: float) -> str:
    """A Prometheus duration, in the largest unit that divides it (``6h``, ``3d``, ``1500ms``)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"duration {seconds!r} s is not positive")
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def _number(value: float) -> str:
    return f"{value:g}"


def alert_names() -> list[str]:
    return [f"TokenSidecar{o.alert}{kind}" for o in OBJECTIVES for kind in ALERT_WINDOWS]


def _series(kind: str, window: str) -> str:
    return f"token_sidecar:slo_{kind}:{window}"


def _alert(
    objective: Objective, kind: str, windows: tuple[AlertWindow, ...], target: str, scale: float
) -> dict[str, Any]:
    name = f"TokenSidecar{objective.alert}{kind}"
    conditions = []
    explained = []
    for window in windows:
        rate = _number(window.burn_rate(objective.window))
        threshold = f"({rate} * (1 - {target}))"
        long_, short = duration(window.long), duration(window.short)
        selector = f'{{slo="{objective.slo}"}}'
        over_long = _series("error_ratio", duration(window.long / scale)) + selector
        over_short = _series("error_ratio", duration(window.short / scale)) + selector
        conditions.append(f"(\n  {over_long} > {threshold}\n  and\n  {over_short} > {threshold}\n)")
        explained.append(f"{rate}x over {long_} and {short}")
    severity = windows[0].severity
    spent = (
        f"at that pace {windows[0].budget_share * 100:g} % of the {duration(objective.window)} "
        f"budget is spent within {duration(windows[0].long)}"
    )
    action = "page" if severity == "critical" else "ticket"
    return {
        "alert": name,
        "expr": "\nor\n".join(conditions) + "\n",
        "labels": {"severity": severity, "slo": objective.slo},
        "annotations": {
            "summary": (
                f"{objective.title.capitalize()} of {{{{ $labels.credential }}}} in "
                f"{{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} is burning its error budget "
                f"{'fast' if kind == 'FastBurn' else 'slowly'}."
            ),
            "description": (
                f"The {objective.title} SLO of credential {{{{ $labels.credential }}}} in pod "
                f"{{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} (target {target} over "
                f"{duration(objective.window)}; good: {objective.good}) is burning its error "
                f"budget at more than {', or '.join(explained)}: {spent}. Severity: {action}."
            ),
            "runbook_url": f"{RUNBOOKS}#{name.lower()}",
        },
    }


def rule_groups(
    targets: Mapping[str, str], latency_threshold: str, *, scale: float = 1.0
) -> list[dict[str, Any]]:
    """The rule groups, with ``targets`` (by ``slo``) and the threshold as literal text."""
    records: list[dict[str, Any]] = []
    budget: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for objective in OBJECTIVES:
        target = targets[objective.slo]
        labels = {"slo": objective.slo}
        for seconds in SLI_WINDOWS:
            ratio, _, _ = objective.sli(duration(seconds / scale), latency_threshold)
            records.append(
                {
                    "record": _series("error_ratio", duration(seconds / scale)),
                    "expr": ratio + "\n",
                    "labels": dict(labels),
                }
            )
        # Bad and all events per 5 minutes, summed over the SLO window below: a 5-minute
        # window without a single refresh then weighs nothing instead of making the sum NaN.
        _, bad, events = objective.sli(duration(300 / scale), latency_threshold)
        for kind, expr in (("bad_events", bad), ("events", events)):
            records.append(
                {
                    "record": _series(kind, f"rate{duration(300 / scale)}"),
                    "expr": expr + "\n",
                    "labels": dict(labels),
                }
            )
        records.append(
            {
                "record": _series("burn_rate", duration(3600 / scale)),
                "expr": f"{_series('error_ratio', duration(3600 / scale))}"
                f'{{slo="{objective.slo}"}} / (1 - {target})\n',
                "labels": dict(labels),
            }
        )
        # The SLO window from the 5-minute recordings: cheap enough for 30 days of history.
        selector = f'{{slo="{objective.slo}"}}[{duration(objective.window / scale)}]'
        rate5m = f"rate{duration(300 / scale)}"
        whole = _series("error_ratio", duration(objective.window / scale))
        budget.append(
            {
                "record": whole,
                "expr": f"sum_over_time({_series('bad_events', rate5m)}{selector})\n"
                f"/ sum_over_time({_series('events', rate5m)}{selector})\n",
                "labels": dict(labels),
            }
        )
        budget.append(
            {
                "record": "token_sidecar:slo_error_budget_remaining:ratio",
                "expr": f'1 - {whole}{{slo="{objective.slo}"}} / (1 - {target})\n',
                "labels": dict(labels),
            }
        )
        for kind, windows in ALERT_WINDOWS.items():
            alerts.append(_alert(objective, kind, windows, target, scale))
    return [
        {"name": "token-sidecar-slo-sli", "rules": records},
        {
            "name": "token-sidecar-slo-budget",
            "interval": duration(300 / scale),
            "rules": budget,
        },
        {"name": "token-sidecar-slo-alerts", "rules": alerts},
    ]


HEADER = """\
# token-sidecar SLOs: recording rules and multi-window, multi-burn-rate alerts.
#
# Generated by scripts/slo_rules.py (through `make manifests`) from one definition of each
# SLO; do not edit. Targets{defaults}: token availability 99.9 %, refresh success 99.9 %,
# refresh latency 99 % under {threshold} s, each over 30 days.
#
# Recorded per credential and pod (every label of the scraped series is kept):
#   token_sidecar:slo_error_ratio:<window>{{slo}}   for 5m, 30m, 1h, 6h, 1d, 3d and 30d
#   token_sidecar:slo_bad_events:rate5m{{slo}}, token_sidecar:slo_events:rate5m{{slo}}
#   token_sidecar:slo_burn_rate:1h{{slo}}           1h error ratio / error budget
#   token_sidecar:slo_error_budget_remaining:ratio{{slo}}
# The 30-day ratio sums the 5-minute event rates (cheap over 30 days of history; a
# 5-minute window without a refresh weighs nothing). Alerts page (severity critical) at
# 14.4x over 1h and 5m or 6x over 6h and 30m, and open a ticket (severity warning) at 1x
# over 3d and 6h; runbooks in docs/runbooks.md.
"""


def render(
    targets: Mapping[str, str] | None = None,
    latency_threshold: str = DEFAULT_LATENCY_THRESHOLD,
    *,
    scale: float = 1.0,
    header: str | None = None,
) -> str:
    """The rule file as YAML text (the default targets unless ``targets`` is given)."""
    chosen = {o.slo: _number(o.target) for o in OBJECTIVES} | dict(targets or {})
    text = yaml.dump(
        {"groups": rule_groups(chosen, latency_threshold, scale=scale)},
        Dumper=_dumper(),
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )
    if header is None:
        header = HEADER.format(defaults="", threshold=latency_threshold)
    return header + text


def render_chart_copy() -> str:
    """The chart's copy: every target and the threshold is a placeholder the chart replaces."""
    return render(
        {o.slo: o.placeholder for o in OBJECTIVES},
        LATENCY_PLACEHOLDER,
        header=HEADER.format(
            defaults=" (the chart's monitoring.slo values replace each __PLACEHOLDER__; defaults)",
            threshold=DEFAULT_LATENCY_THRESHOLD,
        ),
    )


def _dumper() -> type[yaml.SafeDumper]:
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, indentless=False)

    def literal(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else ">" if len(value) > 80 else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, literal)
    return Dumper
