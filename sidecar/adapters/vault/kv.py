"""One credential's KV v2 secret: read it, and write the next version with check-and-set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from sidecar.adapters.vault.api import UnexpectedResponse
from sidecar.adapters.vault.session import VaultSession
from sidecar.errors import SecretInvalid, SecretNotFound, SecretRetired
from sidecar.lifecycle import retirement
from sidecar.model import StoredSecret
from sidecar.status import rfc3339

__all__ = ["VaultSecretStore", "secret_from_kv"]

log = structlog.get_logger(__name__)

_OPTIONAL_FIELDS = ("client_id", "client_secret", "private_key", "client_cert", "client_key")


def _optional_text(data: Mapping[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SecretInvalid(f"{where}: field {name!r} is not a string")
    return value


def secret_from_kv(
    response: Any, location: str, *, needs_refresh_token: bool = True
) -> StoredSecret:
    """Validate a KV v2 ``GET <mount>/data/<path>`` response into a :class:`StoredSecret`.

    ``needs_refresh_token=False`` (grant ``client_credentials``) ignores ``refresh_token``:
    the secret holds only the client's own credentials then.
    """
    body = response.get("data") if isinstance(response, Mapping) else None
    if not isinstance(body, Mapping):
        raise UnexpectedResponse("no data in the KV v2 response")
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        raise UnexpectedResponse("no metadata in the KV v2 response")
    if metadata.get("deletion_time") or metadata.get("destroyed"):
        raise SecretNotFound(f"{location}: the latest version of the secret is deleted")
    data = body.get("data")
    if data is None:
        raise SecretNotFound(f"{location}: the secret has no data")
    if not isinstance(data, Mapping):
        raise SecretInvalid(f"{location}: the secret's data is not a mapping")
    version = metadata.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnexpectedResponse("no version in the KV v2 metadata")
    retired = retirement(data)
    if retired is not None:
        when = f" at {rfc3339(retired.at)}" if retired.at is not None else ""
        who = f" by {retired.by}" if retired.by else ""
        raise SecretRetired(
            f"{location}: the credential was retired{when}{who}; "
            "`token-sidecar seed` puts it back in service"
        )
    refresh_token = data.get("refresh_token") if needs_refresh_token else ""
    if refresh_token is None:
        raise SecretInvalid(f"{location}: field 'refresh_token' is missing")
    if not isinstance(refresh_token, str):
        raise SecretInvalid(f"{location}: field 'refresh_token' is not a string")
    if needs_refresh_token and not refresh_token.strip():
        raise SecretInvalid(f"{location}: field 'refresh_token' is empty")
    client_id, client_secret, private_key, client_cert, client_key = (
        _optional_text(data, name, location) for name in _OPTIONAL_FIELDS
    )
    return StoredSecret(
        location=location,
        version=version,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
        private_key=private_key,
        client_cert=client_cert,
        client_key=client_key,
        data=dict(data),
    )


def _written_version(response: Mapping[str, Any]) -> int:
    body = response.get("data")
    version = body.get("version") if isinstance(body, Mapping) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnexpectedResponse("no version in the KV v2 write response")
    return version


class VaultSecretStore:
    """One credential's KV v2 secret at ``mount/path``; implements ``SecretStore``."""

    def __init__(
        self, session: VaultSession, mount: str, path: str, *, needs_refresh_token: bool = True
    ) -> None:
        self._session = session
        self._needs_refresh_token = needs_refresh_token
        self._mount = mount.strip("/")
        self._path = path.strip("/")
        self._location = f"{self._mount}/{self._path}"
        self._api_path = f"{self._mount}/data/{self._path}"

    @property
    def location(self) -> str:
        return self._location

    async def read(self) -> StoredSecret:
        return await self._session.request(
            "read",
            "GET",
            self._api_path,
            location=self._location,
            parse=lambda answer: secret_from_kv(
                answer, self._location, needs_refresh_token=self._needs_refresh_token
            ),
        )

    async def write(self, secret: StoredSecret, data: Mapping[str, Any]) -> StoredSecret:
        """Write ``data`` as the next version, check-and-set on ``secret.version``."""
        payload = dict(data)
        version = await self._session.request(
            "write",
            "POST",
            self._api_path,
            body={"data": payload, "options": {"cas": secret.version}},
            location=self._location,
            parse=_written_version,
        )
        log.debug("vault.secret_written", location=self._location, version=version)
        return secret_from_kv(
            {"data": {"data": payload, "metadata": {"version": version}}}, self._location
        )

    async def read_fields(self) -> tuple[dict[str, Any] | None, int]:
        """The secret's fields and version as they are, whatever they hold (for ``seed``,
        ``status``, ``retire``): ``(None, 0)`` when there is no secret, ``(None, n)`` when its
        latest version ``n`` is deleted (a check-and-set write must name ``n``)."""

        def fields(answer: Mapping[str, Any]) -> tuple[dict[str, Any] | None, int]:
            body = answer.get("data")
            meta = body.get("metadata") if isinstance(body, Mapping) else None
            if not isinstance(body, Mapping) or not isinstance(meta, Mapping):
                raise UnexpectedResponse("no metadata in the KV v2 response")
            version = meta.get("version")
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise UnexpectedResponse("no version in the KV v2 metadata")
            data = body.get("data")
            if meta.get("deletion_time") or meta.get("destroyed") or data is None:
                return None, version
            if not isinstance(data, Mapping):
                raise SecretInvalid(f"{self._location}: the secret's data is not a mapping")
            return dict(data), version

        def current(answer: Mapping[str, Any]) -> int:
            body = answer.get("data")
            version = body.get("current_version") if isinstance(body, Mapping) else None
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise UnexpectedResponse("no current_version in the KV v2 metadata")
            return version

        try:
            return await self._session.request(
                "read", "GET", self._api_path, location=self._location, parse=fields
            )
        except SecretNotFound:
            pass
        try:
            version = await self._session.request(
                "read",
                "GET",
                f"{self._mount}/metadata/{self._path}",
                location=self._location,
                parse=current,
            )
        except SecretNotFound:
            return None, 0
        return None, version

    async def write_fields(self, data: Mapping[str, Any], *, cas: int) -> int:
        """Write ``data`` as the next version with check-and-set ``cas`` (0: create); the new
        version. Raises CasConflict when the secret is no longer at version ``cas``."""
        version = await self._session.request(
            "write",
            "POST",
            self._api_path,
            body={"data": dict(data), "options": {"cas": cas}},
            location=self._location,
            parse=_written_version,
        )
        log.debug("vault.secret_written", location=self._location, version=version)
        return version

    async def write_refresh_token(self, secret: StoredSecret, refresh_token: str) -> StoredSecret:
        """Replace only ``refresh_token``, keeping every other field (CAS on the version read)."""
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ValueError("refresh_token must be a non-empty string")
        return await self.write(secret, {**secret.data, "refresh_token": refresh_token})
