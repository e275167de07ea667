"""The token volume misbehaving: missing, read-only, full, not ours, and planted symlinks.

Real sidecar processes write into real mounts: a tmpfs mounted read-only or with a size limit
(the tests run as root; where ``mount`` is not permitted, only the sub-case that needs it is
skipped), and a read-only bind mount that stands for the app's view of the volume.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.harness import (
    FOREIGN_PYTHON,
    Sidecar,
    assert_chain_intact,
    log_events,
    use_the_idp,
)
from tests.support.deployment import KV_PATH
from tests.support.rawserver import Faults, Reply

pytestmark = pytest.mark.integration

APP_UID = 1000


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {result.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount when the test ends (most recent first).

    Tests list ``mounts`` before ``sidecar`` so that the sidecar (and the readiness watcher)
    stop before the volumes under them go away.
    """
    made: list[Path] = []
    yield made
    for path in reversed(made):
        umount(path)


def tmpfs(path: Path, mounts: list[Path], *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", ",".join(("mode=0755", *options)), "tmpfs", str(path))
    mounts.append(path)


def as_user(uid: int, gid: int, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as another user (the app container's)."""
    return subprocess.run(
        [FOREIGN_PYTHON, "-c", code],
        user=uid,
        group=gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
        cwd="/",
    )


# -- the directory -------------------------------------------------------------------------------


def test_a_missing_directory_is_created_only_the_owner_can_write(sidecar: Sidecar) -> None:
    """Mode 0755 without a group; 0750 and the group with ``file_group`` (here): the app's
    group can enter and read, nobody but the sidecar's user can create or replace files."""
    out = sidecar.dep.output_dir
    assert not out.exists()
    sidecar.configure(sidecar.issuer(), file_group=APP_UID)
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    info = out.stat()
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_gid == APP_UID
    for name in ("access_token", "token.json"):
        file_info = (out / name).stat()
        assert stat.S_IMODE(file_info.st_mode) == 0o440
        assert file_info.st_gid == APP_UID
    created = sidecar.events("sink.directory_created") or log_events(
        result.stderr, "sink.directory_created"
    )
    assert created[0]["mode"] == "0o750"


def test_read_only_at_start_fails_before_anything_is_exchanged(
    mounts: list[Path], sidecar: Sidecar
) -> None:
    out = sidecar.dep.output_dir
    tmpfs(out, mounts, "ro")
    sidecar.configure(sidecar.issuer())
    _, version = sidecar.vault()
    message = f"cannot write in directory {out}: Read-only file system (EROFS)"
    result = sidecar.once()
    assert result.returncode == 1
    events = log_events(result.stderr, "once.failed")
    assert [(e["error"], e["message"]) for e in events] == [("sink_error", message)]

    # `run` stops (the kubelet restarts it, CrashLoopBackOff shows it) with one clear event.
    process = sidecar.start()
    assert process.wait(timeout=15) == 1
    crashed = sidecar.events("sidecar.crashed")
    assert [(e["level"], e["error"], e["message"]) for e in crashed] == [
        ("critical", "sink_error", message)
    ]
    assert sidecar.route.requests("/token") == []  # nothing exchanged that could not be kept
    assert sidecar.vault()[1] == version


def test_a_directory_not_owned_by_the_sidecar_user(sidecar: Sidecar, public: Path) -> None:
    """Running as a non-root user (as the chart does) in a directory another user owns."""
    out = public / "tokens"
    out.mkdir(mode=0o755)
    os.chown(out, 4242, 4242)
    journal = public / "journal"
    journal.mkdir(mode=0o700)
    os.chown(journal, 65534, 65534)
    jwt = public / "sa-token"
    jwt.write_text((sidecar.dep.root / "sa-token").read_text())
    jwt.chmod(0o644)
    sidecar.configure(sidecar.issuer(), output_dir=str(out))

    def use_public_files(config: dict[str, Any]) -> None:
        config["vault"]["auth"]["jwt_file"] = str(jwt)
        config["journal"] = {"dir": str(journal)}

    sidecar.edit_config(use_public_files)
    config = public / "config.yaml"
    shutil.copy(sidecar.dep.config_path, config)
    config.chmod(0o644)
    result = sidecar.cli_as(65534, 65534, config, "once")
    assert result.returncode == 1, result.stderr
    events = log_events(result.stderr, "once.failed")
    assert [(e["error"], e["message"]) for e in events] == [
        ("sink_error", f"cannot write in directory {out}: Permission denied (EACCES)")
    ]
    assert sidecar.route.requests("/token") == []
    assert list(out.iterdir()) == []


# -- while running -------------------------------------------------------------------------------


def test_read_only_while_running_keeps_the_rotation_and_the_old_file(
    mounts: list[Path], sidecar: Sidecar
) -> None:
    out = sidecar.dep.output_dir
    tmpfs(out, mounts)
    use_the_idp(sidecar)
    sidecar.start()
    sidecar.wait_state("valid")
    before = (out / "access_token").read_text()
    document = (out / "token.json").read_text()
    mount("-o", "remount,ro", str(out))
    sidecar.wait(lambda: sidecar.events("token.publish_failed"), timeout=10)
    failure = sidecar.events("token.publish_failed")[0]
    assert (failure["error"], failure["message"]) == (
        "sink_error",
        f"cannot write {out}/token.json: Read-only file system (EROFS)",
    )
    assert (out / "access_token").read_text() == before  # the old, whole files stay
    assert (out / "token.json").read_text() == document
    assert sidecar.health()["last_error"] == "sink_error"
    # The rotation itself was kept: Vault holds the new refresh token.
    assert sidecar.vault()[0]["refresh_token"] != sidecar.dep.seeded
    # Once the old token expires the pod is not ready, whatever the sidecar holds in memory.
    sidecar.wait(lambda: sidecar.get("/readyz").status_code == 503, timeout=10)
    assert "billing: phase=" in sidecar.get("/readyz").text

    mount("-o", "remount,rw", str(out))
    sidecar.wait(lambda: (out / "access_token").read_text() != before, timeout=10)
    sidecar.wait(lambda: sidecar.get("/readyz").status_code == 200, timeout=10)
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory``; return the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_volume_keeps_the_previous_files_whole(mounts: list[Path], sidecar: Sidecar) -> None:
    out = sidecar.dep.output_dir
    tmpfs(out, mounts, "size=64k")
    use_the_idp(sidecar)
    sidecar.start()
    sidecar.wait_state("valid")
    filler = fill(out)
    before = (out / "access_token").read_text()
    document = (out / "token.json").read_text()
    sidecar.wait(lambda: sidecar.events("token.publish_failed"), timeout=10)
    failure = sidecar.events("token.publish_failed")[0]
    assert failure["error"] == "sink_error"
    assert failure["message"].endswith(": No space left on device (ENOSPC)")
    assert (out / "access_token").read_text() == before
    assert (out / "token.json").read_text() == document
    json.loads(document)  # whole, never torn
    assert sorted(p.name for p in out.iterdir()) == ["access_token", "filler", "token.json"]
    assert sidecar.vault()[0]["refresh_token"] != sidecar.dep.seeded

    filler.unlink()
    sidecar.wait(lambda: (out / "access_token").read_text() != before, timeout=10)
    sidecar.wait_state("valid")
    assert sidecar.stop() == 0
    assert_chain_intact(sidecar)


def test_a_failed_publish_is_retried_on_the_backoff_schedule(
    mounts: list[Path], sidecar: Sidecar
) -> None:
    """The sidecar holds a valid token the app cannot see: it should retry within the
    backoff (here at most 0.5 s), not wait for the next refresh, after the old file expired."""
    out = sidecar.dep.output_dir
    tmpfs(out, mounts)
    issuer = sidecar.issuer(expires_in=6)
    sidecar.configure(issuer)
    sidecar.start()
    sidecar.wait_state("valid")
    mount("-o", "remount,ro", str(out))
    sidecar.wait(lambda: sidecar.events("token.publish_failed"), timeout=10)
    mount("-o", "remount,rw", str(out))
    sidecar.wait(lambda: (out / "access_token").read_text() == issuer.issued_access[-1], timeout=2)


# -- planted files -------------------------------------------------------------------------------


def test_symlinks_planted_at_the_token_paths_are_replaced_not_followed(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    out = sidecar.dep.output_dir
    out.mkdir(parents=True)
    victims = {name: tmp_path / f"victim-{name}" for name in ("access_token", "token.json")}
    for name, victim in victims.items():
        victim.write_text("precious")
        (out / name).symlink_to(victim)
    issuer = sidecar.issuer()
    sidecar.configure(issuer)
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    for name, victim in victims.items():
        assert victim.read_text() == "precious"
        assert not (out / name).is_symlink()
        assert stat.S_IMODE((out / name).lstat().st_mode) == 0o440
    assert (out / "access_token").read_text() == issuer.issued_access[0]


def test_leftover_temporary_files_are_removed_at_start(sidecar: Sidecar, tmp_path: Path) -> None:
    out = sidecar.dep.output_dir
    out.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / ".token-sidecar-tmp.access_token.0123456789abcdef").write_text("half a tok")
    (out / ".token-sidecar-tmp.token.json.fedcba9876543210").symlink_to(victim)
    (out / ".token-sidecar-tmp.probe.00").write_text("")
    (out / ".token-sidecar-tmp.a-directory").mkdir()
    (out / ".someone-elses-file").write_text("kept")
    sidecar.configure(sidecar.issuer())
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [
        ".someone-elses-file",
        ".token-sidecar-tmp.a-directory",
        "access_token",
        "token.json",
    ]
    removed = log_events(result.stderr, "sink.leftovers_removed")
    assert [e["count"] for e in removed] == [3]


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """The temporary name is random; with it fixed, a planted link makes the write fail
    (``O_EXCL|O_NOFOLLOW``) instead of writing through it, and the old file stays."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    from sidecar.adapters.sink import FileSink  # noqa: PLC0415
    from sidecar.errors import SinkError  # noqa: PLC0415
    from sidecar.model import PublishedToken  # noqa: PLC0415

    out = tmp_path / "out"
    sink = FileSink(out, temp_suffix=lambda: "fixed")
    sink.prepare()
    now = datetime.now(UTC)
    token = PublishedToken("CANARY-AT-planted-0001", "Bearer", now, now + timedelta(minutes=5))
    sink.publish(token)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / ".token-sidecar-tmp.token.json.fixed").symlink_to(victim)
    with pytest.raises(SinkError) as caught:
        sink.publish(PublishedToken("CANARY-AT-planted-0002", "Bearer", now, now))
    assert caught.value.message == f"cannot write {out}/token.json: File exists (EEXIST)"
    assert victim.read_text() == "precious"
    assert json.loads((out / "token.json").read_text())["access_token"] == token.access_token
    assert (out / ".token-sidecar-tmp.token.json.fixed").is_symlink()  # not ours: left alone
    sink.prepare()  # ... until the next start, which removes it without following it
    assert not (out / ".token-sidecar-tmp.token.json.fixed").is_symlink()
    assert victim.read_text() == "precious"


# -- modes and the app's view -------------------------------------------------------------------


class ModeWatcher(threading.Thread):
    """Samples the token files' mode and group as fast as it can."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.stopping = threading.Event()
        self.seen: set[tuple[str, int, int]] = set()
        self.inodes: set[int] = set()

    def run(self) -> None:
        while not self.stopping.is_set():
            for name in ("access_token", "token.json"):
                try:
                    info = (self.directory / name).lstat()
                except FileNotFoundError:
                    continue
                self.seen.add((name, stat.S_IMODE(info.st_mode), info.st_gid))
                self.inodes.add(info.st_ino)
            time.sleep(0.001)


def test_files_keep_their_mode_on_every_write_whatever_the_umask(sidecar: Sidecar) -> None:
    out = sidecar.dep.output_dir
    sidecar.configure(sidecar.issuer(expires_in=2), file_mode="0400", file_group=APP_UID)
    watcher = ModeWatcher(out)
    watcher.start()
    sidecar.start(umask=0)
    # Three rotations: each write is a new file renamed into place, so a new inode.
    sidecar.wait(lambda: len(watcher.inodes) >= 6, timeout=20)
    watcher.stopping.set()
    watcher.join(timeout=5)
    assert watcher.seen == {("access_token", 0o400, APP_UID), ("token.json", 0o400, APP_UID)}
    assert sidecar.stop() == 0


def test_the_app_cannot_write_to_the_token_volume(
    mounts: list[Path], sidecar: Sidecar, tmp_path: Path, public: Path
) -> None:
    """The app sees the volume through a read-only mount, as ``readOnly: true`` gives it; and
    even through the sidecar's own writable view, the app's user cannot change anything:
    the sidecar creates the directory 0750 (owner: the sidecar's user, group: ``file_group``)
    and the files 0440."""
    out = public / "tokens" / "billing"
    issuer = sidecar.issuer(expires_in=3)
    sidecar.configure(issuer, file_group=APP_UID, output_dir=str(out))
    result = sidecar.once()
    assert result.returncode == 0, result.stderr
    app_view = tmp_path / "app-view"
    app_view.mkdir()
    mount("--bind", str(out), str(app_view))
    mounts.append(app_view)
    mount("-o", "remount,bind,ro", str(app_view))

    attempts: dict[str, Callable[[Path], object]] = {
        "overwrite": lambda d: (d / "access_token").write_text("x"),
        "create": lambda d: (d / "mine").write_text("x"),
        "replace": lambda d: (d / "token.json").rename(d / "access_token"),
        "remove": lambda d: (d / "access_token").unlink(),
        "chmod": lambda d: (d / "access_token").chmod(0o666),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as caught:
            attempt(app_view)  # even as root: the mount is read-only
        assert caught.value.errno == errno.EROFS, what

    script = """
import json, os, sys
d = {d!r}
print(open(os.path.join(d, "access_token")).read() == {token!r})
errors = []
for attempt in (
    lambda: open(os.path.join(d, "access_token"), "w"),
    lambda: open(os.path.join(d, "mine"), "w"),
    lambda: os.rename(os.path.join(d, "token.json"), os.path.join(d, "access_token")),
    lambda: os.unlink(os.path.join(d, "access_token")),
    lambda: os.chmod(os.path.join(d, "access_token"), 0o666),
):
    try:
        attempt()
        errors.append("allowed")
    except PermissionError:
        errors.append("EACCES")
print(json.dumps(errors))
"""
    answer = as_user(APP_UID, APP_UID, script.format(d=str(out), token=issuer.issued_access[0]))
    assert answer.stdout.splitlines() == ["True", json.dumps(["EACCES"] * 5)], answer.stderr
    other = as_user(2000, 2000, f"open({str(out / 'access_token')!r}).read()")
    assert "PermissionError" in other.stderr  # neither the app's user nor its group

    # The sidecar keeps publishing through its own view; the app sees each new file.
    sidecar.start()
    sidecar.wait(
        lambda: (app_view / "access_token").read_text() != issuer.issued_access[0], timeout=10
    )
    assert sidecar.stop() == 0


def test_the_journal_is_private(sidecar: Sidecar) -> None:
    """A rotated token waiting for Vault lives in a 0600 file in a 0700 directory."""
    faults = Faults(sidecar.dep.openbao.address)
    faults.arm(
        Reply(503, {"errors": ["sealed"]}),
        method="POST",
        path=f"/v1/secret/data/{KV_PATH}",
        body=b'"access"',
        count=-1,
    )
    sidecar.route.otherwise(faults)
    issuer = sidecar.issuer()
    sidecar.route.on("/token", issuer)
    sidecar.configure(sections={"vault": {"address": sidecar.route.url("")}})
    sidecar.start()
    journal = sidecar.dep.root / "journal"
    sidecar.wait(lambda: list(journal.glob("*.json")), timeout=10)
    entry = journal / "billing.json"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert json.loads(entry.read_text())["refresh_token"] == issuer.issued_refresh[0]
    assert sidecar.health()["writeback_pending"] is True
    assert sidecar.metric("token_sidecar_writeback_pending") == 1
    faults.disarm()
    sidecar.wait(lambda: not entry.exists(), timeout=10)
    assert sidecar.vault()[0]["refresh_token"] == issuer.issued_refresh[-1]
    assert sidecar.stop() == 0
