"""Token files: the app's contract (names, content, mode, group) and atomic replacement (R4)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.adapters.sink import FileSink
from sidecar.atomicfile import TEMP_PREFIX, remove_temp_files, temp_name, write_atomic
from sidecar.errors import SinkError
from sidecar.model import PublishedToken

ISSUED = datetime(2026, 11, 22, 13, 41, 0, 250_000, tzinfo=UTC)


def token(value: str = "at-0123456789", *, scope: str | None = "read write") -> PublishedToken:
    return PublishedToken(
        access_token=value,
        token_type="Bearer",
        issued_at=ISSUED,
        expires_at=ISSUED + timedelta(seconds=300),
        scope=scope,
    )


def names(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """A umask that would strip group and owner bits if the sink relied on it."""
    old = os.umask(0o777)
    try:
        yield
    finally:
        os.umask(old)


def test_publish_writes_both_files(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    sink.prepare()
    sink.publish(token())

    assert (tmp_path / "access_token").read_bytes() == b"at-0123456789"
    document = json.loads((tmp_path / "token.json").read_text())
    assert list(document) == [
        "access_token",
        "token_type",
        "expires_at",
        "issued_at",
        "scope",
        "generation",
    ]
    assert document == {
        "access_token": "at-0123456789",
        "token_type": "Bearer",
        "expires_at": "2026-11-22T13:46:00Z",
        "issued_at": "2026-11-22T13:41:00Z",
        "scope": "read write",
        "generation": 1,
    }
    assert names(tmp_path) == ["access_token", "token.json"]


def test_scope_left_out_when_absent(tmp_path: Path) -> None:
    FileSink(tmp_path).publish(token(scope=None))
    assert "scope" not in json.loads((tmp_path / "token.json").read_text())


def test_naive_times_are_refused(tmp_path: Path) -> None:
    naive = PublishedToken(
        access_token="at-0123456789",
        token_type="Bearer",
        issued_at=datetime(2026, 1, 1),  # naive on purpose
        expires_at=datetime(2026, 1, 1, 0, 5),
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        FileSink(tmp_path).publish(naive)
    assert names(tmp_path) == []


@pytest.mark.usefixtures("wide_umask")
def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    FileSink(tmp_path).publish(token())
    for name in ("access_token", "token.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o440
    FileSink(tmp_path, mode=0o640).publish(token("at-second-token"))
    assert stat.S_IMODE((tmp_path / "access_token").stat().st_mode) == 0o640


def test_group_is_set(tmp_path: Path) -> None:
    group = os.getgid()  # a group the process may always give away files to
    FileSink(tmp_path, group=group).publish(token())
    for name in ("access_token", "token.json"):
        assert (tmp_path / name).stat().st_gid == group


def test_replacing_keeps_no_temp_files(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    for index in range(5):
        sink.publish(token(f"at-token-number-{index}"))
    assert (tmp_path / "access_token").read_bytes() == b"at-token-number-4"
    assert names(tmp_path) == ["access_token", "token.json"]


def test_prepare_creates_a_missing_directory(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    FileSink(out).prepare()
    assert out.is_dir()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


@pytest.mark.usefixtures("wide_umask")
def test_prepare_creates_group_directory(tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    FileSink(out, group=os.getgid()).prepare()
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert out.stat().st_gid == os.getgid()


def test_prepare_leaves_an_existing_directory_mode_alone(tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    out.mkdir()
    out.chmod(0o711)
    FileSink(out).prepare()
    assert stat.S_IMODE(out.stat().st_mode) == 0o711
    assert names(out) == []  # the write probe cleans up after itself


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    out.write_text("not a directory")
    with pytest.raises(SinkError, match=rf"{out}: not a directory"):
        FileSink(out).prepare()


def test_prepare_reports_an_unusable_parent(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "tokens"
    with pytest.raises(SinkError, match=r"Not a directory \(ENOTDIR\)") as caught:
        FileSink(out).prepare()
    assert str(out) in str(caught.value)


def test_prepare_removes_leftovers_only(tmp_path: Path) -> None:
    (tmp_path / temp_name("access_token", "dead1")).write_bytes(b"partial")
    (tmp_path / temp_name("token.json", "dead2")).write_bytes(b"{")
    (tmp_path / f"{TEMP_PREFIX}dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "access_token").write_bytes(b"at-previous-run")
    (tmp_path / ".hidden-by-someone-else").write_bytes(b"keep")

    FileSink(tmp_path).prepare()

    assert names(tmp_path) == [".hidden-by-someone-else", "access_token"]
    assert (tmp_path / "access_token").read_bytes() == b"at-previous-run"


def test_prepare_logs_what_it_removed(tmp_path: Path) -> None:
    (tmp_path / temp_name("access_token", "dead")).write_bytes(b"")
    with capture_logs() as logs:
        FileSink(tmp_path).prepare()
    assert logs == [
        {
            "event": "sink.leftovers_removed",
            "directory": str(tmp_path),
            "count": 1,
            "log_level": "info",
        }
    ]


def test_remove_temp_files_counts(tmp_path: Path) -> None:
    (tmp_path / temp_name("x", "1")).write_bytes(b"")
    (tmp_path / temp_name("x", "2")).write_bytes(b"")
    assert remove_temp_files(tmp_path) == 2
    assert remove_temp_files(tmp_path) == 0


def test_symlink_planted_at_the_temp_path_is_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / "access_token").write_bytes(b"at-previous")
    planted = out / temp_name("token.json", "predictable")
    planted.symlink_to(victim)

    sink = FileSink(out, temp_suffix=lambda: "predictable")
    with pytest.raises(SinkError, match=r"out/token\.json: File exists \(EEXIST\)"):
        sink.publish(token())

    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink()  # not ours: left for prepare() and a human to look at
    assert (out / "access_token").read_bytes() == b"at-previous"


def test_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / "access_token").symlink_to(victim)

    FileSink(out).publish(token())

    assert victim.read_bytes() == b"precious"
    assert not (out / "access_token").is_symlink()
    assert (out / "access_token").read_bytes() == b"at-0123456789"


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = FileSink(out)
    sink.prepare()
    sink.publish(token("at-first-token"))
    moved = tmp_path / "moved"
    out.rename(moved)  # the directory vanishes under the sink

    with pytest.raises(SinkError) as caught:
        sink.publish(token("at-second-token"))

    message = str(caught.value)
    assert str(out / "token.json") in message
    assert "No such file or directory (ENOENT)" in message
    assert "at-second-token" not in message
    assert (moved / "access_token").read_bytes() == b"at-first-token"
    assert names(moved) == ["access_token", "token.json"]


FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from sidecar.atomicfile import write_atomic
from sidecar.errors import SinkError

directory = Path(sys.argv[1])
write_atomic(directory, "f", b"old", mode=0o440, group=None)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
try:
    write_atomic(directory, "f", b"n" * 17, mode=0o440, group=None)
except SinkError as exc:
    print(exc)
"""


def test_failed_data_write_keeps_the_previous_file(tmp_path: Path) -> None:
    # A file-size limit fails the write with EFBIG as a full disk fails it with ENOSPC. The
    # limit is process-wide, so it is set in a child process and never in the test runner.
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == f"cannot write {tmp_path / 'f'}: File too large (EFBIG)"
    assert names(tmp_path) == ["f"]
    assert (tmp_path / "f").read_bytes() == b"old"


def test_write_atomic_rejects_paths_as_names(tmp_path: Path) -> None:
    for name in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError, match="plain file name"):
            write_atomic(tmp_path, name, b"", mode=0o600, group=None)


def test_error_message_never_contains_the_data(tmp_path: Path) -> None:
    with pytest.raises(SinkError) as caught:
        write_atomic(tmp_path / "missing", "f", b"secret-bytes", mode=0o600, group=None)
    assert "secret-bytes" not in str(caught.value)
    assert caught.value.kind == "sink_error"


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    values = [f"at-{index:04d}-" + "x" * (index % 97) for index in range(200)]
    sink.publish(token(values[0]))
    allowed = set(values)
    problems: list[str] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            data = (tmp_path / "access_token").read_text()
            if data not in allowed:
                problems.append(f"access_token: {data!r}")
            text = (tmp_path / "token.json").read_text()
            try:
                inside = json.loads(text)["access_token"]
            except ValueError:
                inside = None
            if inside not in allowed:
                problems.append(f"token.json: {text!r}")
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for value in values:
            sink.publish(token(value))
    finally:
        done.set()
        thread.join()

    assert problems == []
    assert reads > 0
    assert (tmp_path / "access_token").read_text() == values[-1]


def test_check_changes_nothing_in_a_directory_a_sidecar_may_be_writing(tmp_path: Path) -> None:
    in_flight = tmp_path / temp_name("access_token", "live1")
    in_flight.write_bytes(b"being written")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert FileSink(tmp_path).check() == f"output_dir {tmp_path} usable"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert in_flight.read_bytes() == b"being written"


def test_check_creates_no_missing_directory(tmp_path: Path) -> None:
    out = tmp_path / "not" / "yet"
    found = FileSink(out, group=os.getgid()).check()
    assert found == f"output_dir {out} absent; run would create it in {tmp_path}"
    assert not (tmp_path / "not").exists()


def test_check_refuses_a_file_where_a_directory_belongs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="is not a directory"):
        FileSink(tmp_path / "file" / "tokens").check()
    assert (tmp_path / "file").read_text() == ""
