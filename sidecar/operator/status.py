"""``token-sidecar status``: what Vault holds for each credential, without a secret.

For each credential (or the one named): the secret's version and state (``ok``,
``rejected``, ``missing``, ``retired``, or ``unreadable`` with the error), how it was seeded,
the refresh token's age, expiry and the replica that rotated it in, the shared access
token's expiry, a claim and until when, shared backoff, and whether a write-back may be
pending (see :func:`sidecar.lifecycle.describe`). Text for people, one JSON object per
credential and line for scripts. Exit code 1 when a required credential cannot be refreshed
from what Vault holds (rejected, missing, retired or unreadable), else 0.
"""

from __future__ import annotations

from typing import Any

from sidecar.errors import SidecarError
from sidecar.lifecycle import describe
from sidecar.operator.context import Operator, find_credential
from sidecar.operator.output import EXIT_FAILED, EXIT_OK, Reporter
from sidecar.ports import Clock

__all__ = ["status"]

_BAD = frozenset({"rejected", "missing", "retired", "unreadable"})


async def status(
    operator: Operator, credential_name: str | None, reporter: Reporter, *, clock: Clock
) -> int:
    settings = operator.settings
    credentials = (
        [find_credential(settings, credential_name)]
        if credential_name
        else [c for c in settings.credentials if c.grant == "refresh_token"]
    )
    failing = False
    for credential in credentials:
        store = operator.store(credential)
        report: dict[str, Any] = {"credential": credential.name, "location": store.location}
        try:
            data, version = await store.read_fields()
        except SidecarError as exc:
            report.update(state="unreadable", error=exc.kind, message=exc.message)
        else:
            report.update(
                describe(
                    data or {},
                    version=version,
                    now=clock.time(),
                    skew=settings.coordination.clock_skew_seconds,
                )
            )
        report["required"] = credential.required
        failing |= credential.required and report["state"] in _BAD
        reporter.event("status", _text(report), result=True, **report)
    return EXIT_FAILED if failing else EXIT_OK


def _text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['credential']}: {report['state']}"
        + (f" ({report['location']} version {report['version']})" if "version" in report else "")
    ]
    if "message" in report:
        lines.append(f"  error: {report['message']}")
    seeded = report.get("seeded")
    if seeded:
        lines.append(f"  seeded: {seeded['at']} by {seeded['by']} ({seeded['flow']} flow)")
    token = report.get("refresh_token")
    if token:
        age = token["age_seconds"]
        lines.append(
            "  refresh token: "
            + (f"obtained {token['obtained_at']}" if token["obtained_at"] else "age unknown")
            + (f" by {token['obtained_by']}" if token["obtained_by"] else "")
            + (f" ({age:.0f} s ago)" if age is not None else "")
            + f", expires {token['expires_at'] or 'unknown'}"
        )
    if report.get("rejected"):
        lines.append(
            "  the authorization server refused this refresh token, or an answer to it was "
            "lost twice: run seed --replace"
        )
    if "access_token_expires_at" in report:
        lines.append(f"  shared access token expires {report['access_token_expires_at']}")
    claim = report.get("claim")
    if claim:
        lines.append(
            f"  claim: {claim['holder']} until {claim['until']}"
            + (" (running)" if claim["live"] else " (ran out without a result)")
        )
    if report.get("writeback_pending"):
        lines.append(
            "  write-back possibly pending: that replica may hold a rotated token it could not "
            "write, or stopped in the middle"
        )
    backoff = report.get("backoff")
    if backoff:
        lines.append(f"  backoff: {backoff['failures']} failure(s), next try {backoff['until']}")
    retired = report.get("retired")
    if retired:
        lines.append(
            f"  retired {retired['at']} by {retired['by']}; "
            + ("revoked" if retired["revoked"] else "NOT yet revoked: run retire again")
        )
    return "\n".join(lines)
