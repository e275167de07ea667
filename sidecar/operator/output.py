"""What the operator commands print: sentences for people, or one JSON object per line.

``--output text`` (the default) prints prompts and progress on stderr and the result on
stdout; ``--output json`` prints every event as one JSON object per line on stdout, for
automation, and nothing else there. Every line passes through the redactor first: the
commands register each token they hold, so a token cannot be printed even by mistake.

Exit codes (see :mod:`sidecar.cli`): 0 success, 1 failure, 2 invalid configuration or
arguments, 3 the user denied the login (``access_denied``), 4 the login was not completed in
time (``expired_token``).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal, TextIO

from sidecar.errors import AuthorizationDenied, AuthorizationExpired, ConfigError, SidecarError
from sidecar.redact import REDACTOR, Redactor

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DENIED",
    "EXIT_EXPIRED",
    "EXIT_FAILED",
    "EXIT_OK",
    "Reporter",
    "exit_code",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DENIED = 3
EXIT_EXPIRED = 4

Mode = Literal["text", "json"]


def exit_code(exc: SidecarError) -> int:
    if isinstance(exc, AuthorizationDenied):
        return EXIT_DENIED
    if isinstance(exc, AuthorizationExpired):
        return EXIT_EXPIRED
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    return EXIT_FAILED


class Reporter:
    """Prints events; ``text`` renders each with its sentence, ``json`` as an object."""

    def __init__(
        self,
        mode: Mode,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        redactor: Redactor = REDACTOR,
    ) -> None:
        self.mode = mode
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self._redactor = redactor

    def _print(self, text: str, stream: TextIO) -> None:
        print(self._redactor.scrub(text), file=stream, flush=True)

    def event(
        self, name: str, text: str | None = None, *, result: bool = False, **fields: Any
    ) -> None:
        """One event: JSON on stdout, or ``text`` on stdout (``result``) or stderr."""
        if self.mode == "json":
            self._print(json.dumps({"event": name, **fields}, sort_keys=False), self._out)
        elif text is not None:
            self._print(text, self._out if result else self._err)

    def failed(self, exc: SidecarError, **fields: Any) -> int:
        """Report a failure; return its exit code."""
        code = exit_code(exc)
        self.event("error", f"error: {exc.message}", error=exc.kind, message=exc.message, **fields)
        return code
