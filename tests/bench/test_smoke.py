"""``make bench`` keeps working: its quick mode, on this interpreter, against the real servers.

A smoke test, not a measurement (timing belongs to ``make bench`` itself): the start-up,
import and per-rotation probes run end to end and report numbers, so a change that breaks
the benchmark (such as the overhead probe's timing proxies losing the ports they wrap) fails
here rather than at the next ``make bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_measures_startup_imports_and_rotations(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--dev-venv"),
            *("--only", "startup,imports,overhead", "--out", str(tmp_path)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "BENCHMARKS.json").read_text())
    for name in ("startup", "imports", "overhead"):
        assert "error" not in report[name], report[name]
    startup = report["startup"]
    assert startup["sidecar_seconds"]["n"] == startup["agent_seconds"]["n"] == 2
    assert all(value > 0 for value in startup["ratio"]["values"])
    assert report["imports"]["modules"] > 100
    overhead = report["overhead"]
    assert overhead["measured_rotations"] >= overhead["rotations"] - 1
    assert overhead["own_cpu_ms"]["median"] > 0
    assert overhead["profile_top"]
    assert "QUICK SMOKE RUN" in report["meta"]["machine"]
    reference = report["meta"]["reference"]
    assert reference["import_stack_seconds"]["n"] == reference["stack_rss_kb"]["n"] > 0
    assert reference["stack_rss_kb"]["median"] > 0
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert markdown.startswith("# Benchmarks")
    assert "The chosen libraries alone" in markdown
    assert "The floor under any start-up with the chosen libraries" in markdown
