"""Vault's HTTP API, the few calls the sidecar makes, over one ``httpx.AsyncClient``.

:class:`VaultApi` sends one request and returns the decoded JSON answer. A non-2xx answer
raises :class:`VaultHttpError` (status, Vault's ``errors`` list and ``Retry-After``); a 2xx
answer that is not a JSON object, or is over 1 MiB, raises :class:`UnexpectedResponse`;
transport failures (and the whole request's deadline) are httpx's own exceptions.
Translating them into :mod:`sidecar.errors` is the session's job, which knows the operation
and the location.

The requests are those of Vault's (and OpenBao's) documented API: ``POST auth/<mount>/login``
for the ``kubernetes``, ``jwt`` and ``approle`` methods, ``GET auth/token/lookup-self``,
``POST auth/token/renew-self``, and KV v2 ``GET``/``POST <mount>/data/<path>`` with
``options.cas``. Every request carries ``X-Vault-Request: true`` and, when configured,
``X-Vault-Namespace``. Redirects are never followed, as for the token endpoint: the token
header would go wherever the ``Location`` points, even to plain ``http://``. A standby that
redirects instead of forwarding is reported (see the session), so ``vault.address`` can name
the active node or a load balancer.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from sidecar.adapters.httpkit import USER_AGENT, BodyTooLarge, Progress, fetch

__all__ = ["UnexpectedResponse", "VaultApi", "VaultHttpError"]


class UnexpectedResponse(Exception):
    """Vault answered 2xx with something that is not the documented shape."""


class VaultHttpError(Exception):
    """Vault answered with an error status. ``errors`` are Vault's messages: matched against,
    never printed (they could quote a request)."""

    def __init__(self, status: int, errors: list[str], retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.errors = errors
        self.retry_after = retry_after


MAX_ANSWER_BYTES = 1 << 20
"""Vault's answers to these calls are a few KiB; anything over 1 MiB is not one of them."""


def _decode(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


class VaultApi:
    """The HTTP side of one Vault server; ``aclose`` when done."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        verify: ssl.SSLContext,
        namespace: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._deadline = timeout
        headers = {"User-Agent": USER_AGENT, "X-Vault-Request": "true"}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        self._client = httpx.AsyncClient(
            base_url=address.rstrip("/") + "/v1/",
            headers=headers,
            timeout=httpx.Timeout(timeout),
            verify=verify,
            follow_redirects=False,
            trust_env=True,  # HTTPS_PROXY and NO_PROXY, as for the Vault CLI
            transport=transport,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str = "",
        body: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]:
        """``method`` on ``/v1/<path>``; the decoded JSON object of a 2xx answer.

        The whole request, body included, has the client's timeout as its deadline (httpx's
        own timeouts are per phase, so a server dripping bytes would never time out), and the
        body is read up to :data:`MAX_ANSWER_BYTES`.
        """
        headers = {"X-Vault-Token": token} if token else None
        request = self._client.build_request(method, path, headers=headers, json=body)
        progress = Progress()
        try:
            response = await fetch(
                self._client,
                request,
                deadline=self._deadline,
                limit=MAX_ANSWER_BYTES,
                progress=progress,
            )
        except TimeoutError:
            raise httpx.ReadTimeout(f"no complete answer within {self._deadline} s") from None
        except BodyTooLarge:
            raise UnexpectedResponse(
                f"an answer of more than {MAX_ANSWER_BYTES >> 20} MiB"
            ) from None
        decoded = _decode(bytes(progress.body))
        if not response.is_success:
            errors = decoded.get("errors") if isinstance(decoded, dict) else None
            raise VaultHttpError(
                response.status_code,
                [str(e) for e in errors] if isinstance(errors, list) else [],
                response.headers.get("Retry-After"),
            )
        if response.status_code == 204:
            return {}
        if not isinstance(decoded, dict):
            raise UnexpectedResponse("the answer is not a JSON object")
        return decoded

    async def aclose(self) -> None:
        await self._client.aclose()
