"""Keep secrets out of anything the sidecar prints: log lines, tracebacks, error text.

Two complementary tools, both pure:

* :class:`Redactor` knows the secret *values* currently alive (refresh and access tokens,
  client secrets, signed assertions) and replaces every occurrence in a piece of text, also in
  the encoded forms a library is likely to print: base64 (standard and URL-safe, padded or not,
  and at any byte alignment, so ``Basic base64(client_id:secret)`` is caught), percent-encoding
  and JSON string escaping.
* :func:`redact_mapping` knows secret-looking *keys* (``access_token``, ``client_secret``,
  ``authorization`` ...) and blanks their values in a structure before it is rendered.

Values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored: they would match too
much ordinary text, and no real token is that short.

Memory is bounded: a registry keeps at most ``max_values`` secrets. Owners are expected to
:meth:`Redactor.discard` a value once it is dead (a consumed refresh token, an expired access
token). If they do not and the bound is reached, the oldest value is dropped, since a value
that old is the one most likely already dead, and :attr:`Redactor.evicted` counts how often
that happened so that a leak in the owner's bookkeeping shows up in tests and metrics.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "REDACTOR",
    "Redactor",
    "encoded_forms",
    "is_secret_key",
    "redact_mapping",
]

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8
DEFAULT_MAX_VALUES = 1024

_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _base64_forms(raw: bytes) -> Iterable[str]:
    """Every base64 text that ``raw`` can turn into, standalone or inside a longer stream.

    Standalone: the full encoding, with and without ``=`` padding. Embedded: base64 works in
    3-byte groups, so the secret's text depends on its offset modulo 3 within the encoded data;
    for each offset, the characters whose 6 bits come from the secret alone (never from the
    bytes around it) appear verbatim in any stream that contains the secret at that offset.
    """
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        full = encode(raw).decode("ascii")
        yield full
        yield full.rstrip("=")
        for offset in range(3):
            text = encode(b"\0" * offset + raw).decode("ascii").rstrip("=")
            first = -(-8 * offset // 6)  # first character holding no bit of the prefix
            last = (8 * (offset + len(raw))) // 6  # characters wholly inside the secret end here
            yield text[first:last]


def encoded_forms(value: str) -> set[str]:
    """``value`` and the encodings of it worth scrubbing, each at least the minimum length."""
    forms = {value, json.dumps(value)[1:-1]}
    for quoted in (quote(value, safe=""), quote_plus(value, safe="")):
        forms.add(quoted)
        forms.add(_PERCENT_ESCAPE.sub(lambda m: m.group(0).lower(), quoted))
    forms.update(_base64_forms(value.encode("utf-8")))
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class Redactor:
    """The secret values alive right now, and a scrubber that removes them from text.

    Thread-safe: :meth:`scrub` may run in a logging handler on any thread while the refresher
    adds and discards values. Every encoded form of every value is indexed by its first
    :data:`MIN_SECRET_LENGTH` characters; a scrub slides that window over the text once and,
    where a window is a known prefix, replaces the longest form that matches there. Adding or
    discarding a value touches only its own forms: nothing is recompiled, so the cost of a
    rotation does not grow with the number of values held.
    """

    def __init__(self, *, max_values: int = DEFAULT_MAX_VALUES) -> None:
        if max_values < 1:
            raise ValueError("max_values must be at least 1")
        self._max_values = max_values
        # dict as an insertion-ordered set: the first key is the oldest value.
        self._values: dict[str, frozenset[str]] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self.evicted = 0
        """How many values were dropped because the bound was reached."""

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<Redactor {len(self._values)} values>"

    def add(self, *values: str | None) -> None:
        """Start scrubbing ``values``; ``None`` and values that are too short are ignored."""
        with self._lock:
            for value in values:
                if value is None or len(value) < MIN_SECRET_LENGTH:
                    continue
                forms = self._values.pop(value, None)
                if forms is None:
                    forms = frozenset(encoded_forms(value))
                    for form in forms:
                        bucket = self._index.setdefault(form[:MIN_SECRET_LENGTH], {})
                        bucket[form] = bucket.get(form, 0) + 1
                # Re-adding refreshes the value's age: it is evidently still alive.
                self._values[value] = forms
            while len(self._values) > self._max_values:
                self._forget(next(iter(self._values)))
                self.evicted += 1

    def discard(self, value: str | None) -> None:
        """Stop scrubbing ``value`` (it is dead); unknown values are ignored."""
        if value is None:
            return
        with self._lock:
            if value in self._values:
                self._forget(value)

    def _forget(self, value: str) -> None:
        for form in self._values.pop(value):
            prefix = form[:MIN_SECRET_LENGTH]
            bucket = self._index[prefix]
            if bucket[form] > 1:
                bucket[form] -= 1
                continue
            del bucket[form]
            if not bucket:
                del self._index[prefix]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._index.clear()

    def scrub(self, text: str) -> str:
        """``text`` with every known secret, in every form, replaced by ``[REDACTED]``."""
        with self._lock:
            index = self._index
            if not index:
                return text
            width = MIN_SECRET_LENGTH
            pieces: list[str] = []
            kept = position = 0
            last = len(text) - width
            while position <= last:
                bucket = index.get(text[position : position + width])
                if bucket is not None:
                    match = max(
                        (form for form in bucket if text.startswith(form, position)),
                        key=len,
                        default=None,
                    )
                    if match is not None:
                        pieces.append(text[kept:position])
                        pieces.append(REDACTED)
                        position += len(match)
                        kept = position
                        continue
                position += 1
            if not pieces:
                return text
            pieces.append(text[kept:])
            return "".join(pieces)


REDACTOR = Redactor()
"""The process-wide registry the adapters feed and the log renderer reads."""


_SECRET_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "assertion",
        "authorization",
        "client_assertion",
        "client_secret",
        "cookie",
        "id_token",
        "jwt",
        "passwd",
        "password",
        "private_key",
        "proxy_authorization",
        "refresh_token",
        "secret",
        "secret_id",
        "set_cookie",
        "token",
        "x_vault_token",
    }
)
_SECRET_SUFFIXES = (
    "_token",
    "_secret",
    "_secret_id",
    "_password",
    "_private_key",
    "_assertion",
    "_jwt",
    "_api_key",
)


def is_secret_key(key: str) -> bool:
    """Whether a field named ``key`` (any case, ``-`` or ``_``) is expected to hold a secret.

    ``token_type``, ``token_endpoint`` or ``secret_version`` are not secrets and are kept.
    """
    normal = key.lower().replace("-", "_")
    return normal in _SECRET_KEYS or normal.endswith(_SECRET_SUFFIXES)


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        items = [_redact_value(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


def redact_mapping(data: Mapping[Any, Any]) -> dict[Any, Any]:
    """A copy of ``data`` in which every secret-looking key's value is ``[REDACTED]``.

    Nested mappings, and mappings inside lists and tuples, are redacted too. A ``None`` value
    is kept, since it tells that a secret is absent without telling anything about one.
    """
    result: dict[Any, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and value is not None and is_secret_key(key):
            result[key] = REDACTED
        else:
            result[key] = _redact_value(value)
    return result
