"""The journal adapter on a real file system: exclusive use, earlier identities, errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sidecar.adapters.journal import MAX_CLAIMANTS, FileJournal, unusable_reason
from sidecar.atomicfile import TEMP_PREFIX
from sidecar.errors import JournalBusy, JournalError, SinkError
from sidecar.model import JournalEntry

ENTRY = JournalEntry("secret/apps/demo", 3, "rt-journalled-0001", 1.0)


def test_open_records_each_process_and_returns_the_earlier_ones(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    first = FileJournal(directory, "billing")
    assert first.open("app-0_one") == frozenset()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    first.close()
    second = FileJournal(directory, "billing")
    assert second.open("app-0_two") == frozenset({"app-0_one"})
    second.close()
    third = FileJournal(directory, "billing")
    assert third.open("app-0_three") == frozenset({"app-0_one", "app-0_two"})
    third.close()


def test_only_the_newest_identities_are_kept(tmp_path: Path) -> None:
    for number in range(MAX_CLAIMANTS + 5):
        journal = FileJournal(tmp_path, "billing")
        journal.open(f"app-0_{number}")
        journal.close()
    last = FileJournal(tmp_path, "billing")
    earlier = last.open("app-0_last")
    last.close()
    assert len(earlier) == MAX_CLAIMANTS
    assert f"app-0_{MAX_CLAIMANTS + 4}" in earlier and "app-0_0" not in earlier


def test_a_journal_in_use_is_busy_for_everyone_else(tmp_path: Path) -> None:
    running = FileJournal(tmp_path, "billing")
    running.open("app-0_run")
    beside = FileJournal(tmp_path, "billing")  # a second open file description: its own lock
    with pytest.raises(JournalBusy, match="locked by another live process"):
        beside.open("app-0_once")
    other_credential = FileJournal(tmp_path, "orders")
    assert other_credential.open("app-0_once") == frozenset()
    running.close()
    other_credential.close()
    assert beside.open("app-0_once") == frozenset({"app-0_run"})
    beside.close()


def test_leftovers_of_a_killed_writer_are_removed_on_open(tmp_path: Path) -> None:
    leftover = tmp_path / f"{TEMP_PREFIX}billing.json.0123456789abcdef"
    leftover.write_text("half")
    journal = FileJournal(tmp_path, "billing")
    journal.open("app-0_new")
    journal.close()
    assert not leftover.exists()


def test_save_load_clear_round_trip(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "journal", "billing")
    assert journal.load() is None
    journal.save(ENTRY)
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert journal.load() == ENTRY
    journal.clear()
    assert journal.load() is None
    journal.clear()  # nothing to clear is fine


def test_every_failure_is_a_journal_error_naming_the_path(tmp_path: Path) -> None:
    in_the_way = tmp_path / "journal"
    in_the_way.write_text("a file where the directory should be")
    journal = FileJournal(in_the_way, "billing")
    for operation in (lambda: journal.save(ENTRY), lambda: journal.open("app-0_x")):
        with pytest.raises(JournalError, match=str(in_the_way)) as caught:
            operation()
        assert isinstance(caught.value, SinkError)  # what the refresher already handles
        assert "rt-journalled" not in caught.value.message
    assert journal.load() is None  # nothing can be there
    journal.clear()

    usable = FileJournal(tmp_path / "usable", "billing")
    usable.path.parent.mkdir()
    usable.path.mkdir()  # a directory where the entry should be: not readable, not removable
    with pytest.raises(JournalError, match="cannot read"):
        usable.load()
    with pytest.raises(JournalError, match="cannot remove"):
        usable.clear()


def test_content_that_is_not_an_entry_counts_as_absent(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, "billing")
    journal.path.write_text('{"location": "x"}')
    assert journal.load() is None


def test_unusable_reason_inspects_without_creating(tmp_path: Path) -> None:
    absent = tmp_path / "a" / "b"
    assert unusable_reason(absent) is None
    assert not (tmp_path / "a").exists()
    assert unusable_reason(tmp_path) is None
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert unusable_reason(a_file) == f"{a_file} is not a directory"
    assert unusable_reason(a_file / "journal") == f"{a_file} is not a directory"
