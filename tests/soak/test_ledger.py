"""The soak's judge, on literal ledgers: what counts as reuse and what R1 permits."""

from __future__ import annotations

from typing import Any

from tests.soak.chaos import names_replica
from tests.soak.ledger import FAULT_KINDS, judge


def entry(seq: int, token: str | None, **fields: Any) -> dict[str, Any]:
    base = {
        "seq": seq,
        "at": 100.0 + seq,
        "replica": "app-1",
        "fault": None,
        "reached": True,
        "token": token,
        "grant": "g1",
        "outcome": "rotated",
        "answered": True,
        "status": 200,
        "done": True,
    }
    return {**base, **fields}


def dropped(seq: int, token: str) -> dict[str, Any]:
    return entry(seq, token, fault="drop_after_commit", answered=False, status=None)


def retry(seq: int, token: str, **fields: Any) -> dict[str, Any]:
    return entry(seq, token, outcome="invalid_grant", status=400, **fields)


def test_a_clean_chain_has_no_reuse() -> None:
    verdict = judge([entry(0, "a"), entry(1, "b"), entry(2, "c")], [], retry_within=10)
    assert (verdict.exchanges, verdict.rotations, verdict.presented_twice) == (3, 3, 0)
    assert verdict.unexplained == ()


def test_the_one_retry_after_a_dropped_answer_is_permitted_and_explains_its_revocation() -> None:
    verdict = judge([entry(0, "a"), dropped(1, "b"), retry(2, "b")], ["g1"], retry_within=10)
    assert verdict.permitted_retries == 1
    assert verdict.unexplained == ()
    assert verdict.revoked == ("g1",)
    assert verdict.revoked_unexplained == ()


def test_a_second_retry_is_reuse() -> None:
    ledger = [dropped(0, "b"), retry(1, "b"), retry(2, "b")]
    verdict = judge(ledger, ["g1"], retry_within=10)
    assert verdict.permitted_retries == 0
    assert len(verdict.unexplained) == 1
    assert "presented 3 times" in verdict.unexplained[0]
    assert verdict.revoked_unexplained == ("g1",)


def test_a_spent_token_from_another_replica_is_reuse_even_after_a_dropped_answer() -> None:
    verdict = judge([dropped(0, "b"), retry(1, "b", replica="app-2")], [], retry_within=10)
    assert len(verdict.unexplained) == 1


def test_a_late_retry_is_reuse() -> None:
    verdict = judge([dropped(0, "b"), retry(30, "b")], [], retry_within=10)
    assert len(verdict.unexplained) == 1


def test_a_token_presented_twice_without_a_dropped_answer_is_reuse() -> None:
    verdict = judge([entry(0, "a"), retry(1, "a", replica="app-3")], ["g1"], retry_within=10)
    assert verdict.presented_twice == 1
    assert len(verdict.unexplained) == 1
    assert verdict.revoked_unexplained == ("g1",)


def test_requests_the_provider_never_saw_are_not_presentations() -> None:
    ledger = [
        entry(0, "a", fault="status", reached=False, outcome=None, status=503),
        entry(1, None, fault="hang", reached=False, outcome=None, answered=False, status=None),
        entry(2, "a"),
    ]
    verdict = judge(ledger, [], retry_within=10)
    assert verdict.presented_twice == 0
    assert verdict.exchanges == 1
    assert verdict.faults["503 with Retry-After"] == 1
    assert verdict.faults["hang past the client's timeout"] == 1
    assert set(FAULT_KINDS) <= set(verdict.faults)


def test_a_claim_names_its_pod_whatever_suffix_identifies_the_process() -> None:
    assert names_replica("app-1", "app-1")
    assert names_replica("app-1_8f2c", "app-1")
    assert names_replica("app-1/412/ab12", "app-1")
    assert not names_replica("app-10_8f2c", "app-1")
    assert not names_replica("app-2", "app-1")
    assert not names_replica(None, "app-1")
