"""Seeded, retired and described: what the operator commands write and report, purely."""

from __future__ import annotations

import json

from sidecar.coordination import FIELD, SharedState, fingerprint
from sidecar.lifecycle import (
    describe,
    live_claim,
    retired_data,
    retirement,
    revoked_data,
    seeded_data,
    seeding_scope,
)
from sidecar.model import TokenGrant

GRANT = TokenGrant(
    access_token="at-1234567890",
    token_type="Bearer",
    expires_in=60,
    refresh_token="rt-new-1234567",
    refresh_expires_in=3600,
)
SHARED = {
    "claim": {"holder": "app-0/1/x", "until": 1000.0},
    "access": {
        "access_token": "at-old-123456",
        "token_type": "Bearer",
        "issued_at": 1,
        "expires_at": 2,
    },
    "rejected": fingerprint("rt-old-1234567"),
    "failures": 3,
}


def test_seed_keeps_the_users_fields_and_replaces_the_shared_state() -> None:
    existing = {
        "refresh_token": "rt-old-1234567",
        "client_id": "c",
        "client_secret": "s",
        FIELD: SHARED,
    }
    data = seeded_data(
        existing, refresh_token="rt-new-1234567", grant=GRANT, at=500.0, by="alice", flow="device"
    )
    assert data["client_id"] == "c"
    assert data["client_secret"] == "s"
    assert data["refresh_token"] == "rt-new-1234567"
    assert data[FIELD] == {
        "refresh": {
            "fingerprint": fingerprint("rt-new-1234567"),
            "obtained_at": 500.0,
            "expires_at": 4100.0,
            "obtained_by": "seed",
        },
        "seeded": {"at": 500.0, "by": "alice", "flow": "device"},
    }
    state = SharedState.parse(data)
    assert state.claim_holder is None and state.rejected is None and state.access is None
    assert "at-1234567890" not in json.dumps(data)


def test_seed_of_a_new_secret() -> None:
    grant = TokenGrant(
        access_token="a" * 10, token_type="Bearer", expires_in=None, refresh_token="r" * 10
    )
    data = seeded_data(None, refresh_token="r" * 10, grant=grant, at=1.0, by="ci", flow="browser")
    assert set(data) == {"refresh_token", FIELD}
    assert "expires_at" not in data[FIELD]["refresh"]


def test_offline_access_is_asked_for_where_advertised() -> None:
    assert seeding_scope("api:read", ("openid", "offline_access")) == "api:read offline_access"
    assert seeding_scope(None, ("offline_access",)) == "offline_access"
    assert seeding_scope("openid offline_access", ("offline_access",)) == "openid offline_access"
    assert seeding_scope("api:read", ("openid",)) == "api:read"
    assert seeding_scope("api:read", None) == "api:read"
    assert seeding_scope(None, None) is None


def test_retire_marks_then_removes() -> None:
    existing = {"refresh_token": "rt-old-1234567", "client_id": "c", FIELD: SHARED}
    marked = retired_data(existing, at=10.0, by="bob")
    assert marked["refresh_token"] == "rt-old-1234567"
    assert marked[FIELD] == {"retired": {"at": 10.0, "by": "bob", "revoked": False}}
    mark = retirement(marked)
    assert mark is not None
    assert (mark.at, mark.by, mark.revoked) == (10.0, "bob", False)
    revoked = revoked_data(marked)
    assert revoked == {
        "client_id": "c",
        FIELD: {"retired": {"at": 10.0, "by": "bob", "revoked": True}},
    }
    assert retirement(existing) is None


def test_a_claim_is_live_until_it_ends_plus_skew() -> None:
    data = {FIELD: {"claim": {"holder": "x", "until": 100.0}}}
    assert live_claim(data, now=99.0, skew=5) == 105.0
    assert live_claim(data, now=104.9, skew=5) == 105.0
    assert live_claim(data, now=105.0, skew=5) is None
    assert live_claim({}, now=0.0, skew=5) is None


def test_describe_a_healthy_secret() -> None:
    data = {
        "refresh_token": "rt-new-1234567",
        "client_secret": "cs-1234567890",
        FIELD: {
            "refresh": {
                "fingerprint": fingerprint("rt-new-1234567"),
                "obtained_at": 1000.0,
                "expires_at": 90000.0,
                "obtained_by": "app-1",
            },
            "seeded": {"at": 500.0, "by": "alice", "flow": "device"},
            "access": {
                "access_token": "at-1234567890",
                "token_type": "Bearer",
                "issued_at": 1000.0,
                "expires_at": 1060.0,
            },
        },
    }
    report = describe(data, version=7, now=1030.0)
    assert report == {
        "version": 7,
        "state": "ok",
        "rejected": False,
        "seeded": {"at": "1970-01-01T00:08:20Z", "by": "alice", "flow": "device"},
        "refresh_token": {
            "obtained_at": "1970-01-01T00:16:40Z",
            "obtained_by": "app-1",
            "age_seconds": 30.0,
            "expires_at": "1970-01-02T01:00:00Z",
        },
        "access_token_expires_at": "1970-01-01T00:17:40Z",
        "writeback_pending": False,
    }
    text = json.dumps(report)
    for secret in ("rt-new-1234567", "cs-1234567890", "at-1234567890"):
        assert secret not in text


def test_describe_rejected_claims_backoff_and_retired() -> None:
    data = {
        "refresh_token": "rt-old-1234567",
        FIELD: {**SHARED, "next_attempt_at": 2000.0},
    }
    live = describe(data, version=3, now=1000.0)
    assert live["state"] == "rejected"
    assert live["claim"] == {"holder": "app-0/1/x", "until": "1970-01-01T00:16:40Z", "live": True}
    assert live["writeback_pending"] is False
    assert live["backoff"] == {"until": "1970-01-01T00:33:20Z", "failures": 3}
    stale = describe(data, version=3, now=1010.0)
    assert stale["claim"]["live"] is False
    assert stale["writeback_pending"] is True
    assert describe({"client_id": "c"}, version=1, now=0)["state"] == "missing"
    retired = describe(retired_data(data, at=0.0, by="bob"), version=4, now=1.0)
    assert retired["state"] == "retired"
    assert retired["retired"] == {"at": "1970-01-01T00:00:00Z", "by": "bob", "revoked": False}
