"""Observability: alert rules, dashboard and metrics checked with promtool and a real Prometheus."""
