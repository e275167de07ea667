"""Answers whose access token is already expired: never published, their rotation never lost.

A real sidecar process and real OpenBao; the token endpoint is the raw server's rotating
issuer, which can answer ``expires_in`` zero or negative (no real server does on demand).
"""

from __future__ import annotations

import threading

import pytest

from tests.hostile.harness import Sidecar

pytestmark = pytest.mark.integration


class FileWatcher(threading.Thread):
    """Every access token the app could have read from the file, as fast as it can look."""

    def __init__(self, sidecar: Sidecar) -> None:
        super().__init__(daemon=True)
        self.path = sidecar.dep.output_dir / "access_token"
        self.stopping = threading.Event()
        self.seen: set[str] = set()

    def run(self) -> None:
        while not self.stopping.wait(0.01):
            try:
                self.seen.add(self.path.read_text())
            except FileNotFoundError:
                continue

    def __enter__(self) -> FileWatcher:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.join(timeout=5)


def test_an_expired_answer_never_replaces_the_published_token(sidecar: Sidecar) -> None:
    issuer = sidecar.issuer(expires_in=3)
    sidecar.configure(issuer)
    with FileWatcher(sidecar) as watcher:
        sidecar.start()
        sidecar.wait(lambda: sidecar.health()["state"] == "valid")
        published = sidecar.token_json()["access_token"]
        good = len(issuer.issued_access)
        issuer.expires_in = -5  # from now on every answer is already expired
        sidecar.wait(lambda: sidecar.refreshes("expired_answer") >= 3, timeout=15)
        expired = set(issuer.issued_access[good:])
        assert expired
        # The valid token stayed in the file until it expired; the answers never got there.
        assert not expired & watcher.seen
        assert sidecar.token_json()["access_token"] in {published, *issuer.issued_access[:good]}
        # Each rotation the expired answers carried reached Vault (R2) and was used once.
        sidecar.wait(lambda: sidecar.vault()[0]["refresh_token"] == issuer.current)
        assert issuer.reuse == 0
        events = sidecar.events("token.expired_answer")
        assert events and all(e["error"] == "expired_answer" for e in events)
        assert sidecar.health()["last_error"] == "expired_answer"

        issuer.expires_in = 3  # the server recovers: the chain goes on from Vault's token
        sidecar.wait(
            lambda: (
                sidecar.health()["state"] == "valid" and sidecar.get("/readyz").status_code == 200
            ),
            timeout=15,
        )
        assert sidecar.token_json()["access_token"] not in expired
    assert sidecar.stop() == 0
    assert issuer.reuse == 0
    assert sidecar.vault()[0]["refresh_token"] == issuer.current


@pytest.mark.parametrize("expires_in", [0, -5])
def test_once_with_an_expired_answer_publishes_nothing_and_keeps_the_rotation(
    sidecar: Sidecar, expires_in: int
) -> None:
    issuer = sidecar.issuer(expires_in=expires_in)
    sidecar.configure(issuer)
    result = sidecar.once()
    assert result.returncode == 1
    assert "already expired" in result.stderr
    assert not (sidecar.dep.output_dir / "access_token").exists()
    data, _ = sidecar.vault()
    assert data["refresh_token"] == issuer.current  # the rotation is not lost
    assert issuer.issued_refresh == [issuer.current]
