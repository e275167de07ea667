"""The journal: a rotated refresh token kept on a private volume until Vault holds it (R2).

One file per credential, ``<dir>/<credential>.json``, mode 0600, replaced atomically. The
directory should be an in-memory ``emptyDir`` that is *not* mounted in the app container: it
survives container restarts (so a crash between the exchange and the Vault write loses
nothing) and disappears with the pod.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import structlog

from sidecar.atomicfile import write_atomic
from sidecar.model import JournalEntry

__all__ = ["FileJournal"]

log = structlog.get_logger(__name__)


class FileJournal:
    def __init__(self, directory: Path, credential: str) -> None:
        self._dir = directory
        self._name = f"{credential}.json"
        self._credential = credential

    @property
    def path(self) -> Path:
        return self._dir / self._name

    def load(self) -> JournalEntry | None:
        try:
            with open(self.path, "rb", opener=_no_follow) as handle:  # needs opener
                raw = json.loads(handle.read())
            return JournalEntry(
                location=str(raw["location"]),
                base_version=int(raw["base_version"]),
                refresh_token=str(raw["refresh_token"]),
                saved_at=float(raw.get("saved_at", 0.0)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "journal.unreadable",
                credential=self._credential,
                path=str(self.path),
                error=type(exc).__name__,
            )
            return None

    def save(self, entry: JournalEntry) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps(
            {
                "location": entry.location,
                "base_version": entry.base_version,
                "refresh_token": entry.refresh_token,
                "saved_at": entry.saved_at,
            }
        ).encode()
        write_atomic(self._dir, self._name, body, mode=0o600, group=None)
        log.debug("journal.saved", base_version=entry.base_version)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
