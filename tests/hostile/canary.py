"""The canary scan: known secret values must never appear in anything the sidecar prints.

Written independently of :mod:`sidecar.redact` (a scrubber checked with its own encoder would
prove little). A value counts as leaked when any of these appears in a scanned text:

- the value itself, or any 16-character window of it (a truncated token is still a leak);
- its URL encodings (``quote``, ``quote_plus``, upper and lower case escapes) and its JSON
  string escaping;
- its base64 and URL-safe base64, padded or not, standalone or embedded at any byte offset
  (``Basic base64(client_id:secret)`` puts the secret at an offset).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

__all__ = ["CanaryScan", "Leak", "leaked_forms"]

WINDOW = 16


def _base64_forms(raw: bytes) -> set[str]:
    forms: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            text = encode(b"\0" * offset + raw).decode("ascii").rstrip("=")
            # Characters that depend only on the value's bytes, whatever surrounds it.
            first = -(-8 * offset // 6)
            last = (8 * (offset + len(raw))) // 6
            forms.add(text[first:last])
        forms.add(encode(raw).decode("ascii"))
    return forms


def leaked_forms(value: str) -> set[str]:
    """Every text whose presence shows ``value`` leaked."""
    forms = {value, json.dumps(value)[1:-1]}
    for quoted in (quote(value, safe=""), quote_plus(value, safe="")):
        forms.add(quoted)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quoted))
    forms |= _base64_forms(value.encode("utf-8"))
    if len(value) > WINDOW:
        forms |= {value[i : i + WINDOW] for i in range(len(value) - WINDOW + 1)}
    return {form for form in forms if len(form) >= 8}


@dataclass(frozen=True, slots=True)
class Leak:
    label: str
    """Where it was found: ``sidecar.log``, ``/healthz``, ``once stderr`` ..."""
    secret: str
    """Which secret, by its description (never the value)."""
    form: str
    """The matched text, shortened."""

    def __str__(self) -> str:
        return f"{self.secret} leaked into {self.label} as {self.form[:24]!r}..."


@dataclass
class CanaryScan:
    """Secrets to look for and texts to look in; :meth:`leaks` reports every match."""

    secrets: dict[str, str] = field(default_factory=dict)
    """value -> description."""
    texts: list[tuple[str, str]] = field(default_factory=list)

    def secret(self, value: object, what: str = "secret") -> None:
        if isinstance(value, str) and len(value) >= 8:
            self.secrets.setdefault(value, what)

    def secret_all(self, values: Iterable[str], what: str) -> None:
        for value in values:
            self.secret(value, what)

    def text(self, label: str, text: str | bytes | None) -> None:
        if text:
            self.texts.append(
                (label, text.decode("utf-8", "replace") if isinstance(text, bytes) else text)
            )

    def leaks(self) -> list[Leak]:
        found: list[Leak] = []
        for value, what in self.secrets.items():
            forms = sorted(leaked_forms(value), key=len, reverse=True)
            pattern = re.compile("|".join(map(re.escape, forms)))
            for label, text in self.texts:
                match = pattern.search(text)
                if match:
                    found.append(Leak(label, what, match.group(0)))
        return found

    def assert_clean(self) -> None:
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(map(str, leaks))
