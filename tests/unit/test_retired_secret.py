"""A retired secret (``token-sidecar retire``) is a final error for every replica, with or
without its refresh token still in it."""

from __future__ import annotations

import pytest

from sidecar.adapters.vault import secret_from_kv
from sidecar.errors import FinalError, SecretRetired
from sidecar.lifecycle import retired_data, revoked_data


def kv(data: dict[str, object], version: int = 3) -> dict[str, object]:
    return {"data": {"data": data, "metadata": {"version": version}}}


def test_marked_but_not_yet_revoked() -> None:
    data = retired_data({"refresh_token": "rt-1234567890", "client_id": "c"}, at=0.0, by="bob")
    with pytest.raises(SecretRetired, match="retired at 1970-01-01T00:00:00Z by bob") as caught:
        secret_from_kv(kv(data), "secret/app")
    assert isinstance(caught.value, FinalError)
    assert caught.value.kind == "retired"
    assert "rt-1234567890" not in caught.value.message
    assert "seed" in caught.value.message


def test_revoked_and_removed() -> None:
    data = revoked_data(retired_data({"refresh_token": "rt-1234567890"}, at=0.0, by="bob"))
    with pytest.raises(SecretRetired):
        secret_from_kv(kv(data), "secret/app")
