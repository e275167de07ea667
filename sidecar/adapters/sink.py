"""The app's side of the contract: token files replaced atomically in a shared directory.

Per credential the sink writes two files into its ``output_dir``:

``token.json``
    ``{"access_token", "token_type", "expires_at", "issued_at"[, "scope"], "generation"}``,
    times in RFC 3339 UTC, keys in that order, indented for people who ``cat`` it,
    newline-terminated. ``generation`` grows by one with every new access token and stays
    the same when the same token is written again; it continues from the ``token.json`` found
    at start, so it keeps growing across container restarts (the ``emptyDir`` survives them).
``access_token``
    the token alone, no newline, for apps that just read a bearer token.

``token.json`` is replaced first and ``access_token`` second, so an app that watches
``access_token`` finds the matching metadata already in place when it wakes up.

Every replacement is atomic (R4 in docs/design.md), by
:func:`sidecar.atomicfile.write_atomic`, which the journal uses too. :meth:`FileSink.prepare`
(``run``, ``once``) creates a missing directory and removes leftover temporary files from a
crashed run; :meth:`FileSink.check` (``check``) only looks: it creates and removes nothing,
since a running sidecar may be writing there.

Once both files hold a new generation, ``on_published`` (if given) is called with the
generation, the expiry and whether the volume held no token before: the hook that tells the
app (see :mod:`sidecar.notify`). The sink keeps a SHA-256 digest of the published token to
tell a new token from a re-written one, never the token itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import structlog

from sidecar.atomicfile import (
    random_suffix,
    remove_temp_files,
    sink_error,
    temp_name,
    write_atomic,
)
from sidecar.errors import SinkError
from sidecar.model import PublishedToken
from sidecar.status import rfc3339

__all__ = ["ACCESS_TOKEN_FILE", "TOKEN_JSON_FILE", "FileSink", "token_json"]

ACCESS_TOKEN_FILE = "access_token"  # noqa: S105  # a file name, not a password
TOKEN_JSON_FILE = "token.json"  # noqa: S105  # a file name, not a password
_DIR_MODE = 0o755
_DIR_MODE_GROUP = 0o750

log = structlog.get_logger(__name__)


def token_json(token: PublishedToken, generation: int | None = None) -> bytes:
    """The ``token.json`` document for ``token``, with ``generation`` when given."""
    for stamp in (token.issued_at, token.expires_at):
        if stamp.tzinfo is None:
            raise ValueError("PublishedToken times must be timezone-aware")
    document: dict[str, str | int] = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_at": rfc3339(token.expires_at.timestamp()),
        "issued_at": rfc3339(token.issued_at.timestamp()),
    }
    if token.scope:
        document["scope"] = token.scope
    if generation is not None:
        document["generation"] = generation
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


class FileSink:
    """:class:`~sidecar.ports.TokenSink` writing ``token.json`` and ``access_token``.

    ``output_dir`` is normally an ``emptyDir`` both containers mount. When it does not exist,
    :meth:`prepare` creates it (and its parents) with mode 0755, or 0750 and ``group`` when a
    group is set, so the app's user can always enter it; an existing directory's mode is left
    alone, since whoever made it chose it.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        mode: int = 0o440,
        group: int | None = None,
        temp_suffix: Callable[[], str] = random_suffix,
        on_published: Callable[[int, datetime, bool], None] | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.mode = mode
        self.group = group
        self._temp_suffix = temp_suffix
        self._on_published = on_published
        #: the generation in token.json: 0 until a token was found or published.
        self.generation = 0
        self._digest: bytes | None = None
        self._announced = 0
        self._had_token = False

    def __repr__(self) -> str:
        return f"FileSink({str(self.output_dir)!r}, mode={self.mode:#o}, group={self.group})"

    def prepare(self) -> None:
        """Make sure the directory exists and is writable; remove leftover temporary files."""
        directory = self.output_dir
        try:
            info = directory.stat()
        except FileNotFoundError:
            self._create_directory()
        except OSError as exc:
            raise sink_error("use directory", directory, exc) from exc
        else:
            if not stat.S_ISDIR(info.st_mode):
                raise SinkError(f"cannot use directory {directory}: not a directory")
        removed = remove_temp_files(directory)
        if removed:
            log.info("sink.leftovers_removed", directory=str(directory), count=removed)
        self._probe()
        self._resume()

    def _resume(self) -> None:
        """Continue from the token.json a previous run left, so generations keep growing."""
        path = self.output_dir / TOKEN_JSON_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        except OSError:
            # A symlink or an unreadable file: publishing replaces it; nothing to continue from.
            log.warning("sink.previous_unreadable", path=str(path))
            return
        try:
            with os.fdopen(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    log.warning("sink.previous_unreadable", path=str(path))
                    return
                self._had_token = True
                document = json.loads(file.read(1_048_576))
        except (OSError, ValueError):
            log.warning("sink.previous_unreadable", path=str(path))
            return
        if not isinstance(document, dict):
            return
        generation = document.get("generation")
        if isinstance(generation, int) and not isinstance(generation, bool) and generation > 0:
            self.generation = self._announced = generation
        token = document.get("access_token")
        if isinstance(token, str):
            self._digest = hashlib.sha256(token.encode("utf-8")).digest()

    def check(self) -> str:
        """Whether ``run`` could use the directory, without changing anything; raise SinkError.

        An existing directory must be writable and searchable; a missing one needs its nearest
        existing ancestor to be, so that ``prepare`` can create it. Returns what was found.
        """
        directory = self.output_dir
        target = directory
        while not target.exists():
            if target.parent == target:
                break
            target = target.parent
        if not target.is_dir():
            raise SinkError(f"cannot use directory {directory}: {target} is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise SinkError(f"cannot use directory {directory}: {target} is not writable")
        if target == directory:
            return f"output_dir {directory} usable"
        return f"output_dir {directory} absent; run would create it in {target}"

    def _probe(self) -> None:
        """Prove now, not at the first refresh, that files can be created here.

        The probe carries the temporary prefix, so a crash right here leaves nothing that the
        next :meth:`prepare` would not remove.
        """
        probe = self.output_dir / temp_name("probe", self._temp_suffix())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            os.close(os.open(probe, flags, 0o600))
            probe.unlink()
        except OSError as exc:
            raise sink_error("write in directory", self.output_dir, exc) from exc

    def _create_directory(self) -> None:
        directory = self.output_dir
        mode = _DIR_MODE if self.group is None else _DIR_MODE_GROUP
        try:
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(mode)
            if self.group is not None:
                os.chown(directory, -1, self.group)
        except OSError as exc:
            raise sink_error("create directory", directory, exc) from exc
        log.info("sink.directory_created", directory=str(directory), mode=f"{mode:#o}")

    def publish(self, token: PublishedToken) -> None:
        """Replace ``token.json``, then ``access_token``. Raises SinkError.

        If the second write fails, ``access_token`` still holds the previous, still valid
        token while ``token.json`` describes the new one; the caller retries the publish, which
        keeps the generation and announces it once both files are written.
        """
        digest = hashlib.sha256(token.access_token.encode("utf-8")).digest()
        if digest != self._digest:
            self.generation += 1
            self._digest = digest
        for name, data in (
            (TOKEN_JSON_FILE, token_json(token, self.generation)),
            (ACCESS_TOKEN_FILE, token.access_token.encode("utf-8")),
        ):
            write_atomic(
                self.output_dir,
                name,
                data,
                mode=self.mode,
                group=self.group,
                temp_suffix=self._temp_suffix,
            )
        first = not self._had_token
        self._had_token = True
        if self.generation > self._announced:
            self._announced = self.generation
            if self._on_published is not None:
                self._on_published(self.generation, token.expires_at, first)
