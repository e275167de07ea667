"""How replicas sharing one secret take turns: shared state in the KV secret, and the decision.

Replicas of a Deployment read the same KV v2 secret. Besides the user's fields
(``refresh_token``, ``client_id``, ...) the sidecar keeps one nested field, ``token_sidecar``::

    token_sidecar:
      claim:   {holder: "<pod or host name>_<random uuid>", until: <epoch seconds>}
      access:  {access_token, token_type, issued_at, expires_at, scope,
                refresh_expires_at}          # the last result, shared for reuse
      next_attempt_at: <epoch seconds>      # shared backoff after a transient failure
      failures: <int>                       # consecutive failures, for that backoff
      rejected: <sha256 of a refresh token the server refused or that may be spent>
      refresh: {fingerprint, obtained_at, expires_at, obtained_by}  # the current refresh token
      seeded:  {at, by, flow}               # written by `token-sidecar seed`
      retired: {at, by, revoked}            # written by `token-sidecar retire`: replicas stop

Each process claims under its own identity, :func:`claimant_identity`: the pod name (or the
host name) for people to read, plus a random UUID, because pod and host names repeat: replicas
with ``hostNetwork`` on one node, systemd units on one VM, ``docker run --network host``, a
``kubectl exec ... once`` beside the running sidecar. Kubernetes' own leader election names
its holders the same way. ``coordination.holder`` overrides it with a fixed name, which every
process configured with it then shares (their claims no longer keep them apart).

A restarted container has a new identity, but must not wait out the claim its predecessor
left when it died mid-exchange. The journal (private to one sidecar container of one pod)
records the identity of every process that used it, and a process uses it only while holding
an exclusive ``flock`` that the kernel drops when the process dies. Whoever holds that lock
therefore knows every identity recorded before it belongs to a process that can no longer
present anything, and treats their claims as its own (``predecessors`` in :func:`decide`).
That is the only case in which a claim is taken over before it expires: a live process, even
one frozen by SIGSTOP, keeps its lock, and a process that could not take the lock (a second
process on the same journal) takes over nothing and runs without the journal. Without a
journal a restarted container waits out its predecessor's claim (``claim_seconds`` plus
``clock_skew_seconds`` at most; a claim only exists during an exchange).

A refresh is a sequence of check-and-set writes on the secret's version, which is the
fencing token (R3):

1. read the secret (version ``v``);
2. :func:`decide`: reuse the shared access token while it is fresh; wait while another
   replica's claim is live or the shared backoff runs; stop on a rejected token; else claim;
3. claim: write ``claim`` with CAS ``v`` -> ``v+1``. Losing the CAS means another replica
   moved first: re-read and decide again. Winning it means nobody wrote since step 1, so the
   state read there is still current;
4. exchange the refresh token, but only while the claim has at least one request timeout
   left by the local monotonic clock, so a replica that stalled past its claim never presents
   a token that another replica may have rotated since;
5. write the result with CAS ``v+1`` -> ``v+2``: the rotated refresh token, the shared access
   token, the claim cleared. Other replicas wake, find a fresh access token and reuse it, so N
   replicas cost the authorization server about one exchange per rotation period.

The policy the sidecar needs is the same as for one replica: read, create and update on the
secret's data path (``<mount>/data/<path>``), read on its metadata path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sidecar.backoff import BackoffPolicy, backoff_delay
from sidecar.errors import Severity
from sidecar.model import TokenGrant

__all__ = [
    "FIELD",
    "Action",
    "CoordinationPolicy",
    "Decision",
    "RefreshFacts",
    "SharedAccess",
    "SharedState",
    "claimant_identity",
    "decide",
    "failure_release",
    "fingerprint",
    "jwt_expiry",
    "with_claim",
    "with_release",
    "with_result",
]

FIELD = "token_sidecar"
"""The one field of the secret that belongs to the sidecar."""


def claimant_identity(name: str, unique: str) -> str:
    """``<name>_<unique>``: the pod or host name for people, a random UUID to be unique."""
    return f"{name}_{unique}"


def fingerprint(refresh_token: str) -> str:
    """A stable, non-reversible name for a refresh token (to mark it rejected)."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class SharedAccess:
    """The access token the last successful replica obtained, for the others to reuse."""

    access_token: str = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float
    scope: str | None = None
    refresh_expires_at: float | None = None

    @classmethod
    def parse(cls, raw: Any) -> SharedAccess | None:
        if not isinstance(raw, Mapping):
            return None
        token, kind = _text(raw.get("access_token")), _text(raw.get("token_type"))
        issued, expires = _number(raw.get("issued_at")), _number(raw.get("expires_at"))
        if token is None or kind is None or issued is None or expires is None:
            return None
        return cls(
            access_token=token,
            token_type=kind,
            issued_at=issued,
            expires_at=expires,
            scope=_text(raw.get("scope")),
            refresh_expires_at=_number(raw.get("refresh_expires_at")),
        )

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }
        if self.scope:
            out["scope"] = self.scope
        if self.refresh_expires_at is not None:
            out["refresh_expires_at"] = self.refresh_expires_at
        return out


def jwt_expiry(token: str) -> float | None:
    """``exp`` of a token that is a JWT (Keycloak's refresh tokens are), read without
    verifying it: it only feeds a metric. ``None`` for opaque tokens."""
    parts = token.split(".")
    if len(parts) != 3:  # header.payload.signature
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return _number(payload.get("exp")) if isinstance(payload, Mapping) else None


@dataclass(frozen=True, slots=True)
class RefreshFacts:
    """What is known about the refresh token in the secret, tied to it by its fingerprint."""

    fingerprint: str
    obtained_at: float | None = None
    expires_at: float | None = None
    obtained_by: str | None = None
    """The replica that rotated it in (its holder name), or ``seed``; for ``status``."""

    @classmethod
    def parse(cls, raw: Any) -> RefreshFacts | None:
        if not isinstance(raw, Mapping) or _text(raw.get("fingerprint")) is None:
            return None
        return cls(
            fingerprint=str(raw["fingerprint"]),
            obtained_at=_number(raw.get("obtained_at")),
            expires_at=_number(raw.get("expires_at")),
            obtained_by=_text(raw.get("obtained_by")),
        )

    def describes(self, refresh_token: str) -> bool:
        return self.fingerprint == fingerprint(refresh_token)

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fingerprint": self.fingerprint}
        if self.obtained_at is not None:
            out["obtained_at"] = self.obtained_at
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        if self.obtained_by is not None:
            out["obtained_by"] = self.obtained_by
        return out


@dataclass(frozen=True, slots=True)
class SharedState:
    claim_holder: str | None = None
    claim_until: float | None = None
    access: SharedAccess | None = None
    next_attempt_at: float | None = None
    failures: int = 0
    rejected: str | None = None
    refresh: RefreshFacts | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SharedState:
        """Read the sidecar's field; anything malformed counts as absent, never as an error."""
        raw = data.get(FIELD)
        if not isinstance(raw, Mapping):
            return cls()
        claim_raw = raw.get("claim")
        claim: Mapping[str, Any] = claim_raw if isinstance(claim_raw, Mapping) else {}
        failures = raw.get("failures")
        if not isinstance(failures, int) or isinstance(failures, bool):
            failures = 0
        return cls(
            claim_holder=_text(claim.get("holder")),
            claim_until=_number(claim.get("until")),
            access=SharedAccess.parse(raw.get("access")),
            next_attempt_at=_number(raw.get("next_attempt_at")),
            failures=failures
            if isinstance(failures, int) and not isinstance(failures, bool)
            else 0,
            rejected=_text(raw.get("rejected")),
            refresh=RefreshFacts.parse(raw.get("refresh")),
        )


@dataclass(frozen=True, slots=True)
class CoordinationPolicy:
    """The ``coordination`` settings, in seconds (defaults and reasons: sidecar.config)."""

    claim_seconds: float
    """How long a claim lasts; longer than one exchange plus one Vault write."""
    clock_skew_seconds: float
    """Allowance for wall clocks that disagree between nodes when judging another's claim."""
    poll_seconds: float
    """How often a waiting replica looks again while another holds the claim."""
    exclusive: bool = False
    """No other process uses the secret: refreshing from memory while Vault is down is safe."""


class Action(Enum):
    REUSE = "reuse"
    WAIT = "wait"
    CLAIM = "claim"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    until: float | None = None
    """REUSE: when the shared token becomes due; WAIT: when to look again (wall clock)."""


def decide(
    refresh_token: str,
    state: SharedState,
    *,
    now: float,
    me: str,
    fresh_until: float | None,
    policy: CoordinationPolicy,
    predecessors: Collection[str] = (),
    rejected: Collection[str] = (),
    reuse_spread: float = 0.0,
    draw: float = 0.0,
) -> Decision:
    """What a replica should do with the secret it just read, and until when.

    ``fresh_until`` is the earliest moment any replica would refresh the shared access token
    (see :func:`sidecar.schedule.refresh_window`), or ``None`` when there is none, and
    ``reuse_spread`` the width of that window. ``predecessors`` are identities of processes
    known to have ended (see the module docstring): their claims are treated as this
    process's own. ``rejected`` holds the fingerprints of tokens this replica saw refused (a
    token it would otherwise claim is reported rejected). ``draw``, uniform in [0, 1), spreads
    the replicas: a REUSE ends somewhere in the refresh window, a WAIT lasts up to 20 % longer.
    A WAIT on another replica's claim while a shared token exists is cut to 5 % of that
    token's lifetime, so the claimant's result is picked up well before the token expires.
    """
    if state.rejected is not None and state.rejected == fingerprint(refresh_token):
        return Decision(Action.REJECTED)
    if fresh_until is not None and now < fresh_until:
        return Decision(Action.REUSE, until=fresh_until + draw * reuse_spread)
    foreign = state.claim_holder not in (None, me) and state.claim_holder not in predecessors
    until: float | None = None
    if foreign and state.claim_until is not None:
        expires = state.claim_until + policy.clock_skew_seconds
        if now < expires:
            until = min(expires, now + policy.poll_seconds)
    if until is None and state.next_attempt_at is not None and now < state.next_attempt_at:
        until = state.next_attempt_at
    if until is None:
        if fingerprint(refresh_token) in rejected:
            return Decision(Action.REJECTED)
        return Decision(Action.CLAIM)
    if state.access is not None and foreign:
        lifetime = state.access.expires_at - state.access.issued_at
        until = min(until, now + max(lifetime * 0.05, 0.05))
    return Decision(Action.WAIT, until=now + (until - now) * (1.0 + 0.2 * draw))


def _with(data: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    raw = data.get(FIELD)
    mine = dict(raw) if isinstance(raw, Mapping) else {}
    for key, value in changes.items():
        if value is None:
            mine.pop(key, None)
        else:
            mine[key] = value
    return {**data, FIELD: mine}


def with_claim(data: Mapping[str, Any], *, holder: str, until: float) -> dict[str, Any]:
    return _with(data, claim={"holder": holder, "until": until})


def with_result(
    data: Mapping[str, Any],
    *,
    refresh_token: str,
    grant: TokenGrant,
    issued_at: float,
    expires_at: float,
    holder: str | None = None,
) -> dict[str, Any]:
    """The secret after a successful exchange: new refresh token, shared access, no claim.

    ``holder`` (the replica that exchanged) is recorded with a rotated refresh token."""
    refresh_expires = (
        issued_at + grant.refresh_expires_in
        if grant.refresh_expires_in is not None and math.isfinite(grant.refresh_expires_in)
        else jwt_expiry(refresh_token)
    )
    known = SharedState.parse(data).refresh
    if refresh_token != data.get("refresh_token"):
        facts = RefreshFacts(fingerprint(refresh_token), issued_at, refresh_expires, holder)
    elif known is not None and known.describes(refresh_token):
        facts = RefreshFacts(
            known.fingerprint,
            known.obtained_at,
            refresh_expires or known.expires_at,
            known.obtained_by,
        )
    else:
        facts = RefreshFacts(fingerprint(refresh_token), None, refresh_expires)
    access = SharedAccess(
        access_token=grant.access_token,
        token_type=grant.token_type,
        issued_at=issued_at,
        expires_at=expires_at,
        scope=grant.scope,
        refresh_expires_at=refresh_expires,
    )
    updated = _with(
        data,
        claim=None,
        access=access.dump(),
        next_attempt_at=None,
        failures=None,
        rejected=None,
        refresh=facts.dump(),
    )
    updated["refresh_token"] = refresh_token
    return updated


def with_release(
    data: Mapping[str, Any],
    *,
    next_attempt_at: float | None = None,
    failures: int | None = None,
    rejected: str | None = None,
) -> dict[str, Any]:
    """The secret after a failed exchange: the claim released, backoff or rejection shared."""
    return _with(
        data,
        claim=None,
        next_attempt_at=next_attempt_at,
        failures=failures,
        rejected=rejected,
    )


def failure_release(
    data: Mapping[str, Any],
    severity: Severity,
    *,
    token: str,
    shared_failures: int,
    now: float,
    backoff: BackoffPolicy,
    secret_poll: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> dict[str, Any]:
    """The secret after an exchange of ``token`` failed with ``severity``: the claim released
    and the failure shared, so the other replicas act on it too (R6).

    Rejected: ``token``'s fingerprint, so no replica presents it again. Retryable: one more
    shared failure (``shared_failures`` were shared before) and the backoff's next attempt, so
    replicas do not all retry at once. Final: the next attempt at the secret-poll pace.
    """
    if severity is Severity.REJECTED:
        return with_release(data, rejected=fingerprint(token))
    if severity is Severity.RETRYABLE:
        failures = shared_failures + 1
        wait = backoff_delay(failures, backoff, rng, retry_after)
        return with_release(data, next_attempt_at=now + wait, failures=failures)
    wait = max(secret_poll, backoff.initial)
    return with_release(data, next_attempt_at=now + wait)
