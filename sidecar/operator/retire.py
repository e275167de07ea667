"""``token-sidecar retire``: take a credential out of service for good.

1. Mark the secret retired (check-and-set, once no replica holds a live claim): every
   replica stops presenting its token at its next read and reports ``retired``, and the
   shared state (a shared access token among it) is dropped.
2. Revoke the refresh token at the server's revocation endpoint (RFC 7009), retrying a 503
   or another transient answer after its ``Retry-After`` (bounded by ``--timeout``).
3. Remove the token from the secret; the mark records that it was revoked.

If the revocation fails, the token stays in Vault beside the mark and ``retire`` can be run
again; ``status`` shows it as not yet revoked. ``seed`` puts a retired credential back in
service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sidecar.adapters.authorization import AuthorizationServer
from sidecar.errors import RetryableError, SecretInvalid, SidecarError
from sidecar.lifecycle import has_refresh_token, retired_data, retirement, revoked_data
from sidecar.model import ClientCredentials
from sidecar.operator.context import Operator, find_credential, operator_name
from sidecar.operator.output import EXIT_OK, Reporter
from sidecar.operator.writes import write_when_free
from sidecar.ports import Clock
from sidecar.redact import REDACTOR

__all__ = ["retire"]


async def retire(
    operator: Operator,
    credential_name: str,
    reporter: Reporter,
    *,
    clock: Clock,
    by: str | None = None,
    timeout: float = 120.0,
    endpoints: Mapping[str, str | None] | None = None,
) -> int:
    credential = find_credential(operator.settings, credential_name)
    store = operator.store(credential)
    skew = operator.settings.coordination.clock_skew_seconds
    who = by or operator_name()
    data, _ = await store.read_fields()
    if data is None or not has_refresh_token(data):
        if data is not None and retirement(data) is not None:
            reporter.event(
                "retired",
                f"{credential.name} is already retired and its token revoked",
                result=True,
                credential=credential.name,
                location=store.location,
                already=True,
            )
            return EXIT_OK
        raise SecretInvalid(f"{store.location}: there is no refresh token to retire")
    client = operator.client(credential, data, store.location)
    server = operator.server(credential, client, endpoints)
    await server.endpoints()  # a missing revocation endpoint is found before anything changes

    def mark(fields: Mapping[str, Any] | None, version: int) -> Mapping[str, Any]:
        if fields is None or not has_refresh_token(fields):
            raise SecretInvalid(f"{store.location}: the refresh token disappeared meanwhile")
        if retirement(fields) is not None:
            return fields  # retired before, revocation not done: write the same again
        return retired_data(fields, at=clock.time(), by=who)

    version, marked = await write_when_free(store, mark, clock=clock, skew=skew, reporter=reporter)
    reporter.event(
        "retire.marked",
        f"marked {store.location} retired (version {version}); replicas stop using it",
        version=version,
    )
    token = str(marked["refresh_token"])
    REDACTOR.add(token)
    await _revoke(server, client, token, reporter=reporter, clock=clock, timeout=timeout)

    def remove(fields: Mapping[str, Any] | None, version: int) -> Mapping[str, Any]:
        return revoked_data(fields or marked)

    version, _ = await write_when_free(store, remove, clock=clock, skew=skew, reporter=reporter)
    reporter.event(
        "retired",
        f"retired {credential.name}: the refresh token was revoked and removed from "
        f"{store.location} (version {version})",
        result=True,
        credential=credential.name,
        location=store.location,
        version=version,
    )
    return EXIT_OK


async def _revoke(
    server: AuthorizationServer,
    client: ClientCredentials,
    token: str,
    *,
    reporter: Reporter,
    clock: Clock,
    timeout: float,
) -> None:
    never = asyncio.Event()
    give_up = clock.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            await server.revoke(token, client)
        except RetryableError as exc:
            wait = exc.retry_after if exc.retry_after is not None else min(2.0**attempt, 30.0)
            if clock.monotonic() + wait > give_up:
                raise
            reporter.event(
                "revocation.retry",
                f"{exc.message}; trying again in {wait:.0f} s",
                error=exc.kind,
                retry_in=wait,
            )
            await clock.wait(never, wait)
            continue
        except SidecarError:
            raise
        reporter.event("revoked", "the authorization server revoked the refresh token")
        return
