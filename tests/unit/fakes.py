"""In-memory stand-ins for the refresher's ports, for unit tests of the core only.

Every fake appends to a shared ``events`` list so tests can assert the order of operations
(R2: persist before publish). The integration tests use the real adapters and servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sidecar.errors import CasConflict, SidecarError, VaultUnavailable
from sidecar.model import ClientCredentials, JournalEntry, PublishedToken, StoredSecret, TokenGrant

T = TypeVar("T")


@dataclass
class Events:
    log: list[tuple[str, object]] = field(default_factory=list)

    def add(self, kind: str, detail: object = None) -> None:
        self.log.append((kind, detail))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.log]


class FakeStore:
    def __init__(self, events: Events, refresh_token: str = "rt-0000000001", **fields: str) -> None:
        self.events = events
        self.location = "secret/apps/demo"
        self.data: dict[str, object] = {"refresh_token": refresh_token, **fields}
        self.version = 1
        self.fail_reads: list[SidecarError] = []
        self.fail_writes: list[SidecarError] = []
        self.down = False

    def _secret(self) -> StoredSecret:
        return StoredSecret(
            location=self.location,
            version=self.version,
            refresh_token=str(self.data["refresh_token"]),
            client_id=self.data.get("client_id"),  # type: ignore[arg-type]
            client_secret=self.data.get("client_secret"),  # type: ignore[arg-type]
            data=dict(self.data),
        )

    def operator_write(self, refresh_token: str) -> None:
        self.data = {**self.data, "refresh_token": refresh_token}
        self.version += 1

    async def read(self) -> StoredSecret:
        self.events.add("read", self.version)
        if self.down:
            raise VaultUnavailable("sealed")
        if self.fail_reads:
            raise self.fail_reads.pop(0)
        return self._secret()

    async def write(self, secret: StoredSecret, data: Mapping[str, Any]) -> StoredSecret:
        shared = data.get("token_sidecar", {})
        kind = "claim" if "claim" in shared else "write"
        self.events.add(kind, data.get("refresh_token") if kind == "write" else None)
        if self.down:
            raise VaultUnavailable("sealed")
        if self.fail_writes and kind == "write":
            raise self.fail_writes.pop(0)
        if secret.version != self.version:
            raise CasConflict("check-and-set parameter did not match")
        self.data = dict(data)
        self.version += 1
        return self._secret()


class FakeExchanger:
    """A rotating authorization server: each refresh token works once."""

    def __init__(self, events: Events, valid: str = "rt-0000000001", expires_in: float = 30.0):
        self.events = events
        self.valid = {valid}
        self.presented: list[str] = []
        self.expires_in: float | None = expires_in
        self.rotate = True
        self.counter = 1
        self.script: list[SidecarError | Callable[[str], None]] = []

    async def refresh(self, refresh_token: str, client: ClientCredentials) -> TokenGrant:
        self.presented.append(refresh_token)
        self.events.add("exchange", refresh_token)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, SidecarError):
                raise step
            step(refresh_token)
        from sidecar.errors import InvalidGrant  # noqa: PLC0415

        if refresh_token not in self.valid:
            raise InvalidGrant("invalid_grant")
        self.counter += 1
        new = None
        if self.rotate:
            self.valid.discard(refresh_token)
            new = f"rt-{self.counter:010d}"
            self.valid.add(new)
        return TokenGrant(
            access_token=f"at-{self.counter:010d}",
            token_type="Bearer",
            expires_in=self.expires_in,
            refresh_token=new,
        )

    async def probe(self) -> None:
        return None


class FakeSink:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.published: list[PublishedToken] = []
        self.fail: list[SidecarError] = []

    def prepare(self) -> None:
        self.events.add("prepare")

    def publish(self, token: PublishedToken) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.events.add("publish", token.access_token)
        self.published.append(token)


class FakeJournal:
    def __init__(self, events: Events) -> None:
        self.events = events
        self.entry: JournalEntry | None = None
        self.claimants: list[str] = []
        self.fail: dict[str, SidecarError] = {}
        """Operation name -> the error it raises from now on (until removed)."""

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.fail:
            raise self.fail[operation]

    def open(self, holder: str) -> frozenset[str]:
        self._maybe_fail("open")
        earlier = frozenset(self.claimants)
        self.claimants.append(holder)
        return earlier

    def close(self) -> None:
        self.events.add("journal_close")

    def load(self) -> JournalEntry | None:
        self._maybe_fail("load")
        return self.entry

    def save(self, entry: JournalEntry) -> None:
        self._maybe_fail("save")
        self.events.add("journal", entry.refresh_token)
        self.entry = replace(entry)

    def clear(self) -> None:
        self._maybe_fail("clear")
        if self.entry is not None:
            self.events.add("journal_clear")
        self.entry = None


def run_without_leaks(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that fails when the code under test leaves tasks behind."""

    async def main() -> T:
        result = await coro
        for _ in range(3):  # let cancelled helpers finish unwinding
            await asyncio.sleep(0)
        leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leaked, f"leaked tasks: {leaked}"
        return result

    return asyncio.run(main())
