"""The KV calls of the operator commands against real OpenBao: fields as they are, and
check-and-set writes from nothing (``cas=0``), over a deleted version, and refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.adapters.vault import VaultSecretStore, VaultSession
from sidecar.clock import SystemClock
from sidecar.config import VaultAuthConfig, VaultConfig
from sidecar.errors import CasConflict
from tests.support.loop import PerTestLoop
from tests.support.openbao import OpenBaoServer

pytestmark = pytest.mark.integration

KV_PATH = "team/operator"
LOOP = PerTestLoop()
run = LOOP.run


@pytest.fixture(autouse=True)
def event_loop_of_the_test() -> Iterator[None]:
    with LOOP.scope():
        yield


@pytest.fixture
def store(openbao: OpenBaoServer, tmp_path: Path) -> Iterator[VaultSecretStore]:
    """The operator's own token, limited to the secret's policy (read, create, update)."""
    openbao.write_kv_policy("operator", KV_PATH)
    token_file = tmp_path / "token"
    token_file.write_text(openbao.create_token(["operator"]))
    session = VaultSession(
        VaultConfig(
            address=openbao.address,
            auth=VaultAuthConfig(method="token", token_file=token_file),
        ),
        environ={},
        clock=SystemClock(),
    )
    try:
        yield VaultSecretStore(session, "secret", KV_PATH)
    finally:
        run(session.aclose())


def test_absent_secret_is_created_with_cas_0_once(
    openbao: OpenBaoServer, store: VaultSecretStore
) -> None:
    assert run(store.read_fields()) == (None, 0)
    assert run(store.write_fields({"refresh_token": "rt-1", "client_id": "c"}, cas=0)) == 1
    with pytest.raises(CasConflict):
        run(store.write_fields({"refresh_token": "rt-2"}, cas=0))
    assert openbao.read_secret(KV_PATH) == ({"refresh_token": "rt-1", "client_id": "c"}, 1)


def test_fields_without_a_refresh_token_are_read_as_they_are(
    openbao: OpenBaoServer, store: VaultSecretStore
) -> None:
    openbao.put_secret(KV_PATH, {"client_id": "c", "client_secret": "cs"})
    assert run(store.read_fields()) == ({"client_id": "c", "client_secret": "cs"}, 1)
    assert run(store.write_fields({"client_id": "c", "refresh_token": "rt"}, cas=1)) == 2
    with pytest.raises(CasConflict):
        run(store.write_fields({"refresh_token": "stale"}, cas=1))


def test_a_deleted_latest_version_names_its_number(
    openbao: OpenBaoServer, store: VaultSecretStore
) -> None:
    openbao.put_secret(KV_PATH, {"refresh_token": "rt-1"})
    openbao.put_secret(KV_PATH, {"refresh_token": "rt-2"})
    openbao.delete_latest(KV_PATH)
    assert run(store.read_fields()) == (None, 2)
    assert run(store.write_fields({"refresh_token": "rt-3"}, cas=2)) == 3
