"""RELIABILITY.md is rendered from RELIABILITY.json alone, and says what the record says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.soak.ledger import FAULT_KINDS
from tests.soak.plan import Plan
from tests.soak.report import main, render, write


def record(**server: Any) -> dict[str, Any]:
    return {
        "meta": {
            "started_at": "2026-12-03T08:00:00+00:00",
            "ended_at": "2026-12-03T08:11:00+00:00",
            "duration_seconds": 660,
            "seed": 7,
            "sidecar_version": "0.1.0",
            "commit": "abc1234",
            "machine": {
                "cpu_model": "Some CPU",
                "cores": 2,
                "cores_usable": 2,
                "platform": "Linux",
                "python": "3.11.2",
                "load_average_before": [3.0, 2.0, 1.0],
            },
        },
        "plan": Plan(seed=7).describe(),
        "chaos": {
            "seconds": 600,
            "kills": 251,
            "restarts": 251,
            "freezes": 40,
            "freezes_declined": 2,
            "seconds_frozen": 480,
            "faults_injected": dict.fromkeys(FAULT_KINDS, 20),
            "faults_applied": dict.fromkeys(FAULT_KINDS, 20),
            "seals": 20,
            "seals_cut_short": 0,
            "seconds_sealed": 50,
        },
        "server": {
            "token_requests": 400,
            "exchanges": 300,
            "rotations": 260,
            "presented_twice": 20,
            "permitted_retries": 20,
            "reuse": 0,
            "reuse_detail": [],
            "reuse_counted_by_provider": 20,
            "grants_revoked": 20,
            "revoked_grants": 0,
            **server,
        },
        "operator": {
            "reseeds_after_window": 0,
            "reseeds_after_revocation": 20,
            "reseeds_after_rejection": 1,
            "window_hits": 0,
            "window_detail": [],
        },
        "readiness": {"ready_answers_checked": 12000, "problems": []},
        "end": {
            "recovered_in_seconds": 4.0,
            "exit_codes": {"app-0": 0, "app-1": 0},
            "unexpected_exits": [],
            "vault_holds_live_token": True,
            "load_average_after": [4.0, 3.0, 2.0],
        },
        "verdict": {"passed": True, "failures": []},
    }


def test_the_report_shows_the_counts_and_the_machine() -> None:
    text = render(record())
    assert "**Result: passed.**" in text
    assert "| Refresh tokens presented twice (reuse) | 0 |" in text
    assert "| SIGKILL, then a container-style restart (same journal, same `POD_NAME`) | 251 |" in (
        text
    )
    assert "Some CPU, 2 cores (2 usable)" in text
    assert "The machine is shared" in text
    assert "`SOAK_SEED=7 make soak` repeats its random choices" in text


def test_a_failed_soak_says_so() -> None:
    failed = record(reuse=1)
    failed["verdict"] = {"passed": False, "failures": ["refresh tokens presented twice: [...]"]}
    text = render(failed)
    assert "**Result: FAILED.**" in text
    assert "- refresh tokens presented twice: [...]" in text


def test_markdown_is_rendered_again_from_the_json(tmp_path: Path) -> None:
    write(record(), tmp_path)
    first = (tmp_path / "RELIABILITY.md").read_text()
    assert json.loads((tmp_path / "RELIABILITY.json").read_text()) == record()
    (tmp_path / "RELIABILITY.md").unlink()
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "RELIABILITY.md").read_text() == first
