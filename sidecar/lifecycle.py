"""A credential's life in Vault as operators see it: seeded, retired, and what ``status`` says.

Pure functions of the secret's fields (see :mod:`sidecar.coordination` for the sidecar's own
field ``token_sidecar``); the operator commands in :mod:`sidecar.operator` read and write.

- :func:`seeded_data`: the secret after ``seed``: the user's fields kept (``client_id``,
  ``client_secret``, ...), ``refresh_token`` set, and the shared state replaced by facts
  about the new token (when and how it was obtained, by whom, its expiry when known), so
  replicas adopt it as they adopt any re-seed and the refresh-token age starts right;
- :func:`retired_data` and :func:`revoked_data`: the two writes of ``retire``: first the
  mark (replicas stop presenting the token), then, once the server revoked it, the token
  removed;
- :func:`retirement`: the mark, if any; :func:`live_claim`: a claim that is still running;
- :func:`describe`: the ``status`` facts, never a secret.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.coordination import FIELD, RefreshFacts, SharedState, fingerprint, jwt_expiry
from sidecar.model import TokenGrant
from sidecar.status import rfc3339

__all__ = [
    "Retirement",
    "describe",
    "has_refresh_token",
    "live_claim",
    "retired_data",
    "retirement",
    "revoked_data",
    "seeded_data",
    "seeding_scope",
]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _mine(data: Mapping[str, Any]) -> Mapping[str, Any]:
    raw = data.get(FIELD)
    return raw if isinstance(raw, Mapping) else {}


def has_refresh_token(data: Mapping[str, Any] | None) -> bool:
    token = (data or {}).get("refresh_token")
    return isinstance(token, str) and bool(token.strip())


def seeded_data(
    existing: Mapping[str, Any] | None,
    *,
    refresh_token: str,
    grant: TokenGrant,
    at: float,
    by: str,
    flow: str,
) -> dict[str, Any]:
    """The secret's fields after ``seed`` obtained ``grant`` at ``at`` (wall clock)."""
    kept = {k: v for k, v in (existing or {}).items() if k not in (FIELD, "refresh_token")}
    expires = (
        at + grant.refresh_expires_in
        if grant.refresh_expires_in is not None and math.isfinite(grant.refresh_expires_in)
        else jwt_expiry(refresh_token)
    )
    facts = RefreshFacts(fingerprint(refresh_token), at, expires, "seed")
    return {
        **kept,
        "refresh_token": refresh_token,
        FIELD: {"refresh": facts.dump(), "seeded": {"at": at, "by": by, "flow": flow}},
    }


def seeding_scope(configured: str | None, supported: tuple[str, ...] | None) -> str | None:
    """The scope to ask for when seeding: the configured one, plus ``offline_access`` when the
    server advertises it (OpenID Connect servers issue refresh tokens only for it)."""
    scopes = (configured or "").split()
    if supported is not None and "offline_access" in supported and "offline_access" not in scopes:
        scopes.append("offline_access")
    return " ".join(scopes) or None


@dataclass(frozen=True, slots=True)
class Retirement:
    at: float | None
    by: str | None
    revoked: bool


def retirement(data: Mapping[str, Any]) -> Retirement | None:
    """The ``retire`` mark, or ``None`` when the credential is in service."""
    raw = _mine(data).get("retired")
    if not isinstance(raw, Mapping):
        return None
    return Retirement(_number(raw.get("at")), _text(raw.get("by")), raw.get("revoked") is True)


def retired_data(existing: Mapping[str, Any], *, at: float, by: str) -> dict[str, Any]:
    """The mark that stops every replica; the shared state (a shared access token, claims,
    backoff) goes with it, the user's fields and the refresh token stay until revoked."""
    return {
        **{k: v for k, v in existing.items() if k != FIELD},
        FIELD: {"retired": {"at": at, "by": by, "revoked": False}},
    }


def revoked_data(existing: Mapping[str, Any]) -> dict[str, Any]:
    """After the server revoked it: the refresh token removed, the mark says so."""
    mark = dict(_mine(existing).get("retired") or {})
    mark["revoked"] = True
    return {
        **{k: v for k, v in existing.items() if k not in (FIELD, "refresh_token")},
        FIELD: {"retired": mark},
    }


def live_claim(data: Mapping[str, Any], *, now: float, skew: float) -> float | None:
    """Until when (wall clock) a replica's claim on the secret runs, or ``None``.

    A replica holding a claim may be exchanging the refresh token right now; writing over it
    before the claim ends could let it present a token the writer is replacing.
    """
    state = SharedState.parse(data)
    if state.claim_holder is None or state.claim_until is None:
        return None
    until = state.claim_until + skew
    return until if now < until else None


def _stamp(value: float | None) -> str | None:
    return rfc3339(value) if value is not None else None


def describe(
    data: Mapping[str, Any], *, version: int, now: float, skew: float = 5.0
) -> dict[str, Any]:
    """What ``status`` reports about one secret's fields: JSON-safe, never a secret.

    ``state`` is ``retired``, ``missing`` (no refresh token), ``rejected`` (the server
    refused the token in Vault, or an answer to it was lost twice so it may be spent) or
    ``ok``. ``writeback_pending`` is what Vault can tell: a claim that ran out without its
    holder writing a result or releasing it means that replica either holds a rotated token
    it could not write yet, or died in the middle.
    """
    state = SharedState.parse(data)
    mine = _mine(data)
    token = data.get("refresh_token") if has_refresh_token(data) else None
    out: dict[str, Any] = {"version": version}
    retired = retirement(data)
    rejected = token is not None and state.rejected == fingerprint(str(token))
    if retired is not None:
        out["state"] = "retired"
    elif token is None:
        out["state"] = "missing"
    elif rejected:
        out["state"] = "rejected"
    else:
        out["state"] = "ok"
    out["rejected"] = rejected
    seeded = mine.get("seeded")
    if isinstance(seeded, Mapping):
        out["seeded"] = {
            "at": _stamp(_number(seeded.get("at"))),
            "by": _text(seeded.get("by")),
            "flow": _text(seeded.get("flow")),
        }
    facts = state.refresh
    if token is not None:
        known = facts if facts is not None and facts.describes(str(token)) else None
        obtained = known.obtained_at if known else None
        expires = known.expires_at if known and known.expires_at else jwt_expiry(str(token))
        out["refresh_token"] = {
            "obtained_at": _stamp(obtained),
            "obtained_by": known.obtained_by if known else None,
            "age_seconds": round(now - obtained, 1) if obtained is not None else None,
            "expires_at": _stamp(expires),
        }
    if state.access is not None:
        out["access_token_expires_at"] = _stamp(state.access.expires_at)
    if state.claim_holder is not None:
        until = state.claim_until
        live = until is not None and now < until + skew
        out["claim"] = {"holder": state.claim_holder, "until": _stamp(until), "live": live}
    out["writeback_pending"] = state.claim_holder is not None and not out["claim"]["live"]
    if state.next_attempt_at is not None and now < state.next_attempt_at:
        out["backoff"] = {"until": _stamp(state.next_attempt_at), "failures": state.failures}
    if retired is not None:
        out["retired"] = {"at": _stamp(retired.at), "by": retired.by, "revoked": retired.revoked}
    return out
