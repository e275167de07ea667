"""Structured logging with redaction, for the sidecar and every library it uses.

Log events, not sentences: ``log.info("token.refreshed", credential="app", expires_in=300)``.
Get loggers with ``structlog.get_logger(__name__)``: names under ``sidecar`` log at the
configured level, everything else (httpx, httpcore, asyncio, ``warnings``) at
WARNING and above, so that a library's request line with a token in its URL never appears.

Both kinds of record meet in one :class:`logging.StreamHandler` whose structlog
``ProcessorFormatter`` does, in order:

1. adds ``timestamp`` (ISO 8601, UTC), ``level`` and ``logger`` to every event;
2. replaces the values of secret-looking keys (:func:`~sidecar.redact.redact_mapping`) and
   scrubs known secret values (:class:`~sidecar.redact.Redactor`) from every string field;
3. turns an exception into data: for ``json`` a list of frames built by
   ``ExceptionDictTransformer(show_locals=False)``, for ``console`` a plain traceback; local
   variables are never rendered, in either format;
4. renders the line: ``json`` (one object per line) or ``console`` (colours only on a tty);
5. scrubs the rendered line once more, which catches a secret inside an exception message or
   anything a renderer produced from a value it did not receive as a string.

An exception nobody caught would otherwise be printed by Python itself, raw, past all of the
above; :func:`configure_logging` installs a ``sys.excepthook`` that logs it instead, as the
event ``sidecar.crashed`` at CRITICAL, through the same redaction.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from sidecar.errors import SidecarError
from sidecar.redact import REDACTOR, Redactor, redact_mapping

__all__ = ["LIBRARY_LEVEL", "configure_logging", "log_uncaught"]

LIBRARY_LEVEL = logging.WARNING
"""Level for every logger outside the ``sidecar`` namespace."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FORMATS = ("json", "console")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """Marks the handler this module installed, so reconfiguring replaces it."""


class _Redact:
    """Processor: blank secret-looking keys, then scrub known secrets from string values."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._redactor.scrub(value)
        if isinstance(value, Mapping):
            return {key: self._scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple) and not _is_exc_info(value):
            items = [self._scrub(item) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
        return value

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        redacted = redact_mapping(event_dict)
        return {key: self._scrub(value) for key, value in redacted.items()}


def _is_exc_info(value: list[Any] | tuple[Any, ...]) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException)


class _ScrubRendered:
    """Final processor: the rendered line, with every known secret removed."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, rendered: EventDict | str) -> str:
        if not isinstance(rendered, str):
            raise TypeError("the renderer must run before the final scrub")
        return self._redactor.scrub(rendered)


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _leading_keys_first(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Put when, how bad, where and what first, so a JSON line reads like a log line."""
    ordered = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _level(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}: {level!r}") from None


def log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook``: log an uncaught exception as ``sidecar.crashed``, redacted.

    Python's own hook would print the message and traceback as they are; an exception raised
    with a token in its message (a bug, or a library quoting what it was given) must not
    reach the container log that way. ``KeyboardInterrupt`` keeps Python's behaviour.
    """
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    first = exc
    while isinstance(first, BaseExceptionGroup) and first.exceptions:
        first = first.exceptions[0]  # the task group's: say what actually failed
    fields: dict[str, Any] = {"error": type(first).__name__}
    if isinstance(first, SidecarError):
        # Written never to hold a secret, and scrubbed like everything else anyway.
        fields.update(error=first.kind, message=first.message)
    try:
        structlog.get_logger(__name__).critical(
            "sidecar.crashed", **fields, exc_info=(exc_type, exc, tb)
        )
    except Exception:  # noqa: BLE001  # the last resort must not raise; say only the type
        print(f"sidecar.crashed: {exc_type.__name__} (not rendered)", file=sys.__stderr__)


def configure_logging(
    level: str,
    fmt: str,
    *,
    stream: IO[str] | None = None,
    redactor: Redactor = REDACTOR,
    excepthook: bool = True,
) -> None:
    """Send structlog events and stdlib records, redacted, to ``stream`` (default stderr).

    ``level`` applies to the ``sidecar`` loggers (``debug``, ``info``, ``warning``, ``error``);
    other libraries log at WARNING and above. ``fmt`` is ``json`` or ``console``. With
    ``excepthook`` (the default), uncaught exceptions are logged by :func:`log_uncaught`.
    Calling it again replaces the previous configuration.
    """
    sidecar_level = _level(level)
    if fmt not in _FORMATS:
        raise ValueError(f"log format must be one of {', '.join(_FORMATS)}: {fmt!r}")
    out = stream if stream is not None else sys.stderr

    stamped: list[Processor] = [
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor]
    if fmt == "json":
        renderer = [
            structlog.processors.StackInfoRenderer(),
            ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            _Redact(redactor),
            _leading_keys_first,
            structlog.processors.JSONRenderer(),
        ]
    else:
        is_tty = bool(getattr(out, "isatty", lambda: False)())
        renderer = [
            structlog.processors.StackInfoRenderer(),
            _Redact(redactor),
            structlog.dev.ConsoleRenderer(
                colors=is_tty,
                # The default formatter (rich, when installed) would print local variables.
                exception_formatter=structlog.dev.plain_traceback,
            ),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *renderer,
            _ScrubRendered(redactor),
        ],
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LIBRARY_LEVEL)
    logging.getLogger("sidecar").setLevel(sidecar_level)
    # Python warnings (urllib3's InsecureRequestWarning names the host) go the same way.
    logging.captureWarnings(True)
    if excepthook:
        sys.excepthook = log_uncaught

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *stamped,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger made at import time picks up this configuration when it logs.
        cache_logger_on_first_use=False,
    )
