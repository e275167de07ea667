"""The journal: a rotated refresh token kept on a private volume until Vault holds it (R2).

Per credential, in ``<dir>``:

``<credential>.json``
    the rotated refresh token not yet in Vault, mode 0600, replaced atomically;
``<credential>.lock``
    an empty file this process holds an exclusive ``flock`` on from :meth:`FileJournal.open`
    until it exits. The kernel drops the lock when the process dies, SIGKILL included, so
    holding it proves that no other process of this sidecar is alive on this journal;
``<credential>.claimants``
    the claim identities of the processes that held the lock before (JSON list, newest
    last). Each of them is provably gone, so a claim in Vault under one of those names is a
    dead process's claim, and this process may take it over instead of waiting it out.

The directory should be an in-memory ``emptyDir`` that is *not* mounted in the app container:
it survives container restarts (so a crash between the exchange and the Vault write loses
nothing, and the restarted container takes over its predecessor's claim) and disappears with
the pod. Every failure is a :class:`~sidecar.errors.JournalError` (a ``SinkError``) naming the
path and the OS reason; a token never appears in a message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

import structlog

from sidecar.atomicfile import remove_temp_files, write_atomic
from sidecar.errors import JournalBusy, JournalError, SinkError
from sidecar.model import JournalEntry

__all__ = ["MAX_CLAIMANTS", "FileJournal", "unusable_reason"]

log = structlog.get_logger(__name__)

MAX_CLAIMANTS = 16
"""Earlier identities remembered: enough for a crash loop to reach a claim made 16 restarts
ago; an older claim is simply waited out (``claim_seconds``), which is safe."""


def _reason(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or type(exc).__name__
    return f"{text} ({code})" if code else text


def _error(what: str, path: Path, exc: OSError) -> JournalError:
    return JournalError(f"journal: cannot {what} {path}: {_reason(exc)}")


class FileJournal:
    def __init__(self, directory: Path, credential: str) -> None:
        self._dir = directory
        self._name = f"{credential}.json"
        self._credential = credential
        self._lock_fd: int | None = None

    @property
    def path(self) -> Path:
        return self._dir / self._name

    @property
    def claimants_path(self) -> Path:
        return self._dir / f"{self._credential}.claimants"

    @property
    def lock_path(self) -> Path:
        return self._dir / f"{self._credential}.lock"

    def _ensure_dir(self) -> None:
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _error("create", self._dir, exc) from exc

    # -- exclusive use --------------------------------------------------------------------

    def open(self, holder: str) -> frozenset[str]:
        """Take this process's exclusive use of the journal and record ``holder`` in it.

        Returns the identities of the processes that used the journal before; none of them
        is alive. Raises :class:`JournalBusy` when a live process holds the lock, and
        :class:`JournalError` when the journal cannot be used.
        """
        if self._lock_fd is not None:
            return frozenset()
        self._ensure_dir()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as exc:
            raise _error("open", self.lock_path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalBusy(
                    f"journal: {self.lock_path} is locked by another live process of this "
                    "sidecar (a `once` beside `run`?)"
                ) from exc
            raise _error("lock", self.lock_path, exc) from exc
        self._lock_fd = fd
        try:
            # Left by a process killed mid-write; none can be in progress (the lock is ours).
            remove_temp_files(self._dir)
        except SinkError as exc:
            log.warning("journal.leftovers_not_removed", message=exc.message)
        earlier = self._read_claimants()
        try:
            body = json.dumps([*earlier, holder][-MAX_CLAIMANTS:]).encode()
            write_atomic(self._dir, self.claimants_path.name, body, mode=0o600, group=None)
        except SinkError as exc:
            # Only a successor's takeover needs it: it will wait this process's claims out.
            log.warning("journal.claimant_not_recorded", message=exc.message)
        return frozenset(earlier)

    def _read_claimants(self) -> list[str]:
        try:
            with open(self.claimants_path, "rb", opener=_no_follow) as handle:
                raw = json.loads(handle.read())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("journal.claimants_unreadable", error=type(exc).__name__)
            return []
        if not isinstance(raw, list):
            return []
        return [each for each in raw if isinstance(each, str) and each]

    def close(self) -> None:
        """Give up exclusive use (the process is done with the journal)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)

    # -- the entry ------------------------------------------------------------------------

    def load(self) -> JournalEntry | None:
        """The journalled entry, ``None`` when there is none.

        Raises :class:`JournalError` when the file exists but cannot be read: it may hold the
        only copy of a live refresh token, so the caller must not go on as if it were absent.
        Content that is not an entry (never written by this sidecar, which replaces the file
        atomically) is logged and treated as absent: retrying cannot make it readable.
        """
        try:
            with open(self.path, "rb", opener=_no_follow) as handle:
                data = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _error("read", self.path, exc) from exc
        try:
            raw = json.loads(data)
            return JournalEntry(
                location=str(raw["location"]),
                base_version=int(raw["base_version"]),
                refresh_token=str(raw["refresh_token"]),
                saved_at=float(raw.get("saved_at", 0.0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error(
                "journal.unreadable",
                credential=self._credential,
                path=str(self.path),
                error=type(exc).__name__,
            )
            return None

    def save(self, entry: JournalEntry) -> None:
        self._ensure_dir()
        body = json.dumps(
            {
                "location": entry.location,
                "base_version": entry.base_version,
                "refresh_token": entry.refresh_token,
                "saved_at": entry.saved_at,
            }
        ).encode()
        try:
            write_atomic(self._dir, self._name, body, mode=0o600, group=None)
        except SinkError as exc:
            raise JournalError(f"journal: {exc.message}") from exc
        log.debug("journal.saved", base_version=entry.base_version)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _error("remove", self.path, exc) from exc


def unusable_reason(directory: Path) -> str | None:
    """Why ``directory`` cannot serve as the journal, by inspection only; ``None`` if it can.

    Nothing is created or changed: an absent directory is fine when its nearest existing
    ancestor is a directory this process may create entries in.
    """
    path = directory
    while True:
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists() or path.is_symlink()
        except OSError as exc:
            return f"cannot inspect {path}: {_reason(exc)}"
        if exists:
            break
        if path.parent == path:
            return f"no existing ancestor of {directory}"
        path = path.parent
    if not is_dir:
        return f"{path} is not a directory"
    if path == directory:
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            return f"{path} is not readable and writable by this process"
    elif not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable by this process, so {directory} cannot be created"
    return None


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
