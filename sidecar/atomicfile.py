"""Atomic, durable file replacement: the one primitive behind the token files and the journal.

The bytes go to a temporary file in the same directory, opened with
``O_CREAT|O_EXCL|O_NOFOLLOW`` under a hidden name with a random suffix (so a symlink planted
there is never followed: the open fails instead), then fsync, rename over the target, fsync of
the directory. A reader sees the old file or the new one, never a partial or empty one. A
symlink *at the target name* is not followed either: the rename replaces the link itself. Mode
and group are set on the open descriptor, so the process umask has no say.

Errors become :class:`~sidecar.errors.SinkError` naming the path and the OS reason; the data
being written never appears in a message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from sidecar.errors import SinkError

__all__ = [
    "TEMP_PREFIX",
    "random_suffix",
    "remove_temp_files",
    "sink_error",
    "temp_name",
    "write_atomic",
]

TEMP_PREFIX = ".token-sidecar-tmp."
"""Hidden, recognisable prefix of every temporary file; :func:`remove_temp_files` keys on it."""


def random_suffix() -> str:
    """Unpredictable part of a temporary file's name."""
    return secrets.token_hex(8)


def temp_name(name: str, suffix: str) -> str:
    """The temporary file that will be renamed to ``name``."""
    return f"{TEMP_PREFIX}{name}.{suffix}"


def _reason(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or type(exc).__name__
    return f"{text} ({code})" if code else text


def sink_error(what: str, path: Path, exc: OSError) -> SinkError:
    return SinkError(f"cannot {what} {path}: {_reason(exc)}")


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a plain file name: {name!r}")


def write_atomic(
    directory: Path,
    name: str,
    data: bytes,
    *,
    mode: int,
    group: int | None,
    temp_suffix: Callable[[], str] = random_suffix,
) -> None:
    """Replace ``directory/name`` with ``data`` atomically and durably.

    ``mode`` is applied exactly (umask ignored); ``group``, when given, becomes the file's
    group. ``temp_suffix`` names the temporary file; tests inject it to plant things there.
    Raises :class:`SinkError` naming the target and the OS reason. The temporary file is
    removed on every failure; a failure before the rename leaves the previous target as it
    was (after it, only the directory fsync can fail, and the new file is already in place).
    """
    _check_name(name)
    target = directory / name
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise sink_error("write", target, exc) from exc
    try:
        _write_in(dir_fd, target, data, mode=mode, group=group, temp=temp_name(name, temp_suffix()))
    finally:
        os.close(dir_fd)


def _write_in(
    dir_fd: int, target: Path, data: bytes, *, mode: int, group: int | None, temp: str
) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise sink_error("write", target, exc) from exc
    # From here on the temporary file is ours: remove it unless it has become the target.
    renamed = False
    try:
        try:
            os.fchmod(fd, mode)
            if group is not None:
                os.fchown(fd, -1, group)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        renamed = True
        os.fsync(dir_fd)
    except OSError as exc:
        raise sink_error("write", target, exc) from exc
    finally:
        if not renamed:
            # It may be gone with its directory; the original error is what matters.
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)


def remove_temp_files(directory: Path) -> int:
    """Remove temporary files left by an earlier run; return how many were removed.

    Only names carrying :data:`TEMP_PREFIX` are touched, and symlinks are removed as links.
    """
    removed = 0
    try:
        with os.scandir(directory) as entries:
            leftovers = [
                entry.name
                for entry in entries
                if entry.name.startswith(TEMP_PREFIX) and not entry.is_dir(follow_symlinks=False)
            ]
        for leftover in leftovers:
            try:
                (directory / leftover).unlink()
            except FileNotFoundError:
                continue  # removed concurrently: the goal is met
            removed += 1
    except OSError as exc:
        raise sink_error("clean up", directory, exc) from exc
    return removed
