"""Leave the process's logging as a test found it, after the sidecar's configuration changed it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import structlog

__all__ = ["logging_restored"]


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Handlers the block added are removed and closed; levels, warning capture and structlog's
    configuration are reset."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sidecar_level = logging.getLogger("sidecar").level
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        logging.getLogger("sidecar").setLevel(sidecar_level)
        structlog.reset_defaults()
