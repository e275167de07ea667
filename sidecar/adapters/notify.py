"""The ways of telling the app its token changed: an HTTP POST, a signal, a command.

Each sender makes one attempt and either returns (acknowledged) or raises
:class:`~sidecar.errors.NotifyFailed` with a ``kind`` for the metric's ``outcome``; when to
try and whether to try again is :mod:`sidecar.notify`'s decision. None of them ever carries the
token: the body, the environment and the arguments hold the credential's name, the generation
and the expiry only.

``http``
    ``POST`` of ``{"credential", "generation", "expires_at"}`` (JSON) to a loopback URL; any
    2xx acknowledges. No redirects, no proxy from the environment.
``signal``
    The pid is read from ``pid_file`` at every attempt (an app that restarted has written a new
    one), and must be a process other than pid 1 and the sidecar itself.
``exec``
    ``argv`` run directly (no shell) with a small environment: ``PATH``, ``LANG`` and
    ``TOKEN_SIDECAR_CREDENTIAL``, ``TOKEN_SIDECAR_GENERATION``, ``TOKEN_SIDECAR_EXPIRES_AT``,
    ``TOKEN_SIDECAR_TOKEN_FILE`` (the path, not the token). Never the sidecar's own environment,
    which may hold ``VAULT_TOKEN``. Exit 0 acknowledges; past ``timeout`` the command is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path

import httpx

from sidecar.errors import NotifyFailed
from sidecar.model import Notification
from sidecar.status import rfc3339

__all__ = ["ExecSender", "HttpSender", "SignalSender", "body"]

_PID_FILE_LIMIT = 64
_PID_MAX = 4_194_304  # Linux's largest pid_max


def body(notification: Notification) -> dict[str, str | int]:
    """What an HTTP receiver gets (and what the command's environment says)."""
    return {
        "credential": notification.credential,
        "generation": notification.generation,
        "expires_at": rfc3339(notification.expires_at.timestamp()),
    }


class HttpSender:
    def __init__(self, url: str, client: httpx.AsyncClient, timeout: float) -> None:
        self.url = url
        self._client = client
        self._timeout = timeout

    async def send(self, notification: Notification) -> None:
        try:
            response = await self._client.post(
                self.url,
                content=json.dumps(body(notification)).encode(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException as exc:
            raise NotifyFailed("timeout", f"POST {self.url}: no answer in time") from exc
        except httpx.HTTPError as exc:
            raise NotifyFailed("unreachable", f"POST {self.url}: {type(exc).__name__}") from exc
        if not 200 <= response.status_code < 300:
            raise NotifyFailed("status", f"POST {self.url}: HTTP {response.status_code}")


class SignalSender:
    def __init__(self, pid_file: Path, signum: signal.Signals) -> None:
        self.pid_file = pid_file
        self.signum = signum

    def _pid(self) -> int:
        try:
            with self.pid_file.open("rb") as file:
                text = file.read(_PID_FILE_LIMIT).decode("ascii").strip()
        except FileNotFoundError as exc:
            raise NotifyFailed("no_pid_file", f"pid file {self.pid_file} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise NotifyFailed("no_pid_file", f"cannot read pid file {self.pid_file}") from exc
        if not text.isdigit():
            raise NotifyFailed("no_pid_file", f"pid file {self.pid_file} holds no pid")
        pid = int(text)
        if pid > _PID_MAX:
            raise NotifyFailed("no_pid_file", f"pid file {self.pid_file} holds no valid pid")
        # 0 and negative pids address process groups; 1 is the pod's init (or the app's own
        # pid 1 without a shared namespace, which a signal would not reach anyway).
        if pid <= 1 or pid == os.getpid():
            raise NotifyFailed("no_pid_file", f"pid file {self.pid_file} names pid {pid}")
        return pid

    async def send(self, notification: Notification) -> None:
        pid = self._pid()
        try:
            os.kill(pid, self.signum)
        except ProcessLookupError as exc:
            raise NotifyFailed("no_process", f"no process {pid} (from {self.pid_file})") from exc
        except PermissionError as exc:
            raise NotifyFailed(
                "forbidden", f"not allowed to signal process {pid} (from {self.pid_file})"
            ) from exc


class ExecSender:
    def __init__(
        self,
        argv: list[str],
        timeout: float,
        token_file: Path,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self._timeout = timeout
        self._token_file = token_file
        source = os.environ if environ is None else environ
        self._base = {k: source[k] for k in ("PATH", "LANG") if k in source}

    def environment(self, notification: Notification) -> dict[str, str]:
        values = body(notification)
        return {
            **self._base,
            "TOKEN_SIDECAR_CREDENTIAL": str(values["credential"]),
            "TOKEN_SIDECAR_GENERATION": str(values["generation"]),
            "TOKEN_SIDECAR_EXPIRES_AT": str(values["expires_at"]),
            "TOKEN_SIDECAR_TOKEN_FILE": str(self._token_file),
        }

    async def send(self, notification: Notification) -> None:
        command = self.argv[0]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=self.environment(notification),
                close_fds=True,
            )
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, "error")
            raise NotifyFailed("not_runnable", f"cannot run {command} ({reason})") from exc
        try:
            async with asyncio.timeout(self._timeout):
                code = await process.wait()
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise NotifyFailed(
                "timeout", f"{command} did not finish within {self._timeout:g}s"
            ) from exc
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            raise
        if code != 0:
            raise NotifyFailed("exit_status", f"{command} exited with status {code}")
