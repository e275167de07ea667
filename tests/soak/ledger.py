"""What the authorization server's own records say about a soak: every refresh token presented,
how often, by which replica, and whether a second presentation is the one R1 permits.

The input is the test server's ledger (:meth:`tests.support.idp.IdpServer.ledger`): one entry
per request to the token endpoint, with the presented refresh token's fingerprint, the replica
that sent it (the token endpoint URL's ``replica`` parameter), the injected fault, whether the
provider saw it and what it answered. Only requests the provider saw count as presentations: a
request answered by an injected 503 or dropped before the provider read it consumed nothing.

A refresh token presented to the provider twice is a violation, with one exception that R1
names and no client can avoid: the server committed a rotation and an injected fault dropped
its answer (``drop_after_commit``), so the client, which cannot tell a lost request from a lost
answer, retries the very same request once, immediately. oidc-provider revokes the grant on
that retry. Those are counted as ``permitted_retries``; anything else is ``unexplained``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FAULT_KINDS", "Verdict", "fault_kind", "judge"]

#: Every fault the soak injects, by the name the report uses.
FAULT_KINDS = (
    "503 with Retry-After",
    "429 with Retry-After",
    "answer dropped after commit",
    "hang, then answered",
    "hang past the client's timeout",
)


def fault_kind(entry: Mapping[str, Any]) -> str | None:
    """The report's name for the fault applied to one ledger entry, ``None`` for none."""
    mode = entry.get("fault")
    if mode is None:
        return None
    if mode == "status":
        return f"{entry.get('status')} with Retry-After"
    if mode == "hang":
        return "hang, then answered" if entry.get("reached") else "hang past the client's timeout"
    if mode == "drop_after_commit":
        return "answer dropped after commit"
    return str(mode)


@dataclass(frozen=True, slots=True)
class Verdict:
    requests: int
    """Every POST to the token endpoint, faulted or not."""
    exchanges: int
    """Refresh requests the provider saw."""
    rotations: int
    """Exchanges that rotated the refresh token (the server committed a new one)."""
    presented_twice: int
    """Refresh tokens the provider saw more than once, permitted retries included."""
    permitted_retries: int
    """Of those, the one immediate retry after an injected answer dropped after commit."""
    unexplained: tuple[str, ...]
    """Every other repeated presentation, described for the failure message."""
    revoked: tuple[str, ...]
    """Grants the server revoked."""
    revoked_unexplained: tuple[str, ...]
    """Revoked grants that no permitted retry accounts for."""
    faults: dict[str, int]
    """Faults applied, by kind (see :data:`FAULT_KINDS`)."""


def judge(
    ledger: Sequence[Mapping[str, Any]], revoked: Iterable[str], *, retry_within: float
) -> Verdict:
    """Classify every repeated presentation in ``ledger``; ``retry_within`` bounds, in seconds,
    how long after the dropped answer the permitted retry may come (one request timeout and
    some slack: the sidecar retries at once)."""
    by_token: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for entry in ledger:
        if entry.get("reached") and entry.get("token"):
            by_token[str(entry["token"])].append(entry)
    permitted: list[Mapping[str, Any]] = []
    unexplained: list[str] = []
    for token, seen in by_token.items():
        if len(seen) < 2:
            continue
        first, *again = sorted(seen, key=lambda e: int(e["seq"]))
        if _permitted_retry(first, again, retry_within):
            permitted.append(first)
            continue
        who = ", ".join(f"{e.get('replica')} at {e['at']:.3f} ({e.get('outcome')})" for e in seen)
        unexplained.append(f"refresh token {token} presented {len(seen)} times: {who}")
    revoked_all = tuple(dict.fromkeys(revoked))
    explained_grants = {str(e.get("grant")) for e in permitted}
    faults = Counter(kind for kind in map(fault_kind, ledger) if kind is not None)
    return Verdict(
        requests=len(ledger),
        exchanges=sum(1 for e in ledger if e.get("reached")),
        rotations=sum(1 for e in ledger if e.get("outcome") == "rotated"),
        presented_twice=len(permitted) + len(unexplained),
        permitted_retries=len(permitted),
        unexplained=tuple(unexplained),
        revoked=revoked_all,
        revoked_unexplained=tuple(g for g in revoked_all if g not in explained_grants),
        faults={kind: faults.get(kind, 0) for kind in (*FAULT_KINDS, *sorted(faults))},
    )


def _permitted_retry(
    first: Mapping[str, Any], again: Sequence[Mapping[str, Any]], within: float
) -> bool:
    if len(again) != 1:
        return False
    retry = again[0]
    return (
        first.get("fault") == "drop_after_commit"
        and first.get("outcome") == "rotated"
        and retry.get("replica") == first.get("replica")
        and 0 <= float(retry["at"]) - float(first["at"]) <= within
    )
