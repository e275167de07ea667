"""Operator writes to a secret that running replicas share: wait out a live claim, then CAS.

A replica holding a claim may be presenting the refresh token right now (see
:mod:`sidecar.coordination`). Writing over the secret then would let it finish an exchange
with a token the operator is replacing or retiring, so an operator write waits until the
claim is released or runs out (by the wall clock, with the configured skew), then writes
with check-and-set on the version it read last. A lost check-and-set (a replica moved in the
meantime) reads again and decides again; Vault being unavailable is retried with backoff
until ``deadline`` seconds have passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.adapters.vault import VaultSecretStore
from sidecar.errors import CasConflict, VaultUnavailable
from sidecar.lifecycle import live_claim
from sidecar.operator.output import Reporter
from sidecar.ports import Clock

__all__ = ["write_when_free"]

Build = Callable[[Mapping[str, Any] | None, int], Mapping[str, Any]]


async def write_when_free(
    store: VaultSecretStore,
    build: Build,
    *,
    clock: Clock,
    skew: float,
    reporter: Reporter,
    deadline: float = 120.0,
    poll: float = 0.5,
) -> tuple[int, Mapping[str, Any]]:
    """Write ``build(fields, version)`` once no claim runs; the version written and the data.

    ``build`` may raise to refuse (``seed`` without ``--replace`` finding a token).
    """
    never = asyncio.Event()
    give_up = clock.monotonic() + deadline
    delay = poll
    told = False
    while True:
        try:
            data, version = await store.read_fields()
            claim = live_claim(data or {}, now=clock.time(), skew=skew)
            if claim is not None and clock.monotonic() < give_up:
                if not told:
                    reporter.event(
                        "claim.wait",
                        "a replica is refreshing the token right now; waiting for it to finish",
                        until=claim,
                    )
                    told = True
                await clock.wait(never, min(claim - clock.time(), poll) + 0.05)
                continue
            new = build(data, version)
            written = await store.write_fields(new, cas=version)
        except CasConflict:
            continue
        except VaultUnavailable:
            if clock.monotonic() + delay >= give_up:
                raise
            await clock.wait(never, delay)
            delay = min(delay * 2, 10.0)
            continue
        return written, new
