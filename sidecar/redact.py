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
_TRIE_DEPTH = 6

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
    adds and discards values. A scrub costs one pass of a compiled regular expression, rebuilt
    only when the set of values changes.
    """

    def __init__(self, *, max_values: int = DEFAULT_MAX_VALUES) -> None:
        if max_values < 1:
            raise ValueError("max_values must be at least 1")
        self._max_values = max_values
        # dict as an insertion-ordered set: the first key is the oldest value.
        self._values: dict[str, None] = {}
        self._pattern: re.Pattern[str] | None = None
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
            changed = False
            for value in values:
                if value is None or len(value) < MIN_SECRET_LENGTH:
                    continue
                if value in self._values:
                    # Re-adding refreshes the value's age: it is evidently still alive.
                    del self._values[value]
                else:
                    changed = True
                self._values[value] = None
            while len(self._values) > self._max_values:
                del self._values[next(iter(self._values))]
                self.evicted += 1
                changed = True
            if changed:
                self._pattern = None

    def discard(self, value: str | None) -> None:
        """Stop scrubbing ``value`` (it is dead); unknown values are ignored."""
        if value is None:
            return
        with self._lock:
            if value in self._values:
                del self._values[value]
                self._pattern = None

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None

    def scrub(self, text: str) -> str:
        """``text`` with every known secret, in every form, replaced by ``[REDACTED]``."""
        pattern = self._compiled()
        if pattern is None:
            return text
        return pattern.sub(REDACTED, text)

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                forms: set[str] = set()
                for value in self._values:
                    forms |= encoded_forms(value)
                self._pattern = re.compile(_alternation(forms))
            return self._pattern


def _shared_prefix(texts: set[str]) -> str:
    low, high = min(texts), max(texts)
    size = 0
    while size < len(low) and low[size] == high[size]:
        size += 1
    return low[:size]


def _alternation(forms: set[str], depth: int = 0) -> str:
    """A regular expression matching any of ``forms``, preferring the longest at a position.

    Alternatives are factored by their leading characters, a shallow trie, so that a scan
    tries a few dozen branches per position instead of every form: with hundreds of secrets
    this is the difference between microseconds and milliseconds per log line. Preferring the
    longest form means a padded encoding wins over its unpadded prefix and no stray characters
    of a secret survive next to the marker.
    """
    optional = "" in forms
    rest = forms - {""}
    if not rest:
        return ""
    if depth >= _TRIE_DEPTH or len(rest) == 1:
        body = "|".join(map(re.escape, sorted(rest, key=lambda form: (-len(form), form))))
    else:
        by_first: dict[str, set[str]] = {}
        for form in rest:
            by_first.setdefault(form[0], set()).add(form[1:])
        branches = []
        for first, tails in sorted(by_first.items()):
            shared = _shared_prefix(tails)
            tail = _alternation({t[len(shared) :] for t in tails}, depth + 1)
            branches.append(re.escape(first + shared) + tail)
        body = "|".join(branches)
    # A greedy ``?`` tries the longer continuation first, then settles for ending here.
    if optional:
        return f"(?:{body})?"
    # The top level stays bare so that the engine can derive its fast first-character check.
    return body if depth == 0 else f"(?:{body})"


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
