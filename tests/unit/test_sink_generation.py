"""``token.json``'s ``generation``: one more per new token, kept across restarts, announced once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.adapters.sink import FileSink
from sidecar.errors import SinkError
from sidecar.model import PublishedToken

ISSUED = datetime(2026, 11, 22, 13, 41, tzinfo=UTC)


def token(value: str) -> PublishedToken:
    return PublishedToken(
        access_token=value,
        token_type="Bearer",
        issued_at=ISSUED,
        expires_at=ISSUED + timedelta(minutes=5),
    )


def generation(directory: Path) -> int:
    value = json.loads((directory / "token.json").read_text())["generation"]
    assert isinstance(value, int)
    return value


class Announced:
    def __init__(self) -> None:
        self.calls: list[tuple[int, datetime, bool]] = []

    def __call__(self, generation: int, expires_at: datetime, first: bool) -> None:
        self.calls.append((generation, expires_at, first))


def test_a_new_token_is_a_new_generation_and_a_rewrite_is_not(tmp_path: Path) -> None:
    announced = Announced()
    sink = FileSink(tmp_path, on_published=announced)
    sink.prepare()
    sink.publish(token("at-one-0000000000"))
    sink.publish(token("at-one-0000000000"))
    assert generation(tmp_path) == 1
    sink.publish(token("at-two-0000000000"))
    assert generation(tmp_path) == 2
    assert announced.calls == [
        (1, ISSUED + timedelta(minutes=5), True),
        (2, ISSUED + timedelta(minutes=5), False),
    ]


def test_generations_continue_after_a_restart(tmp_path: Path) -> None:
    first = FileSink(tmp_path)
    first.prepare()
    for value in ("at-a-00000000000", "at-b-00000000000", "at-c-00000000000"):
        first.publish(token(value))
    assert generation(tmp_path) == 3

    announced = Announced()
    restarted = FileSink(tmp_path, on_published=announced)
    restarted.prepare()
    assert restarted.generation == 3
    restarted.publish(token("at-c-00000000000"))  # the same token, re-published at start
    assert generation(tmp_path) == 3
    assert announced.calls == []
    restarted.publish(token("at-d-00000000000"))
    assert generation(tmp_path) == 4
    assert announced.calls == [(4, ISSUED + timedelta(minutes=5), False)]


def test_a_token_json_without_generation_counts_from_one_and_is_not_a_first(
    tmp_path: Path,
) -> None:
    (tmp_path / "token.json").write_text(json.dumps({"access_token": "at-old-000000000"}))
    announced = Announced()
    sink = FileSink(tmp_path, on_published=announced)
    sink.prepare()
    sink.publish(token("at-new-000000000"))
    assert announced.calls == [(1, ISSUED + timedelta(minutes=5), False)]


def test_an_unreadable_previous_file_does_not_stop_the_sink(tmp_path: Path) -> None:
    (tmp_path / "token.json").write_text("{not json")
    sink = FileSink(tmp_path)
    sink.prepare()
    sink.publish(token("at-new-000000000"))
    assert generation(tmp_path) == 1


def test_a_failed_second_write_keeps_the_generation_and_announces_it_once(
    tmp_path: Path,
) -> None:
    announced = Announced()
    sink = FileSink(tmp_path, on_published=announced)
    sink.prepare()
    sink.publish(token("at-a-00000000000"))
    (tmp_path / "access_token").unlink()
    (tmp_path / "access_token").mkdir()  # the rename over it fails
    with pytest.raises(SinkError):
        sink.publish(token("at-b-00000000000"))
    assert generation(tmp_path) == 2
    assert [c[0] for c in announced.calls] == [1]
    (tmp_path / "access_token").rmdir()
    sink.publish(token("at-b-00000000000"))
    assert generation(tmp_path) == 2
    assert [c[0] for c in announced.calls] == [1, 2]


def test_a_symlink_planted_at_token_json_is_not_followed_and_does_not_stop_the_sink(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"access_token": "at-x", "generation": 41}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "token.json").symlink_to(target)
    sink = FileSink(tmp_path / "out")
    sink.prepare()
    assert sink.generation == 0
    sink.publish(token("at-new-000000000"))
    assert generation(tmp_path / "out") == 1
    assert json.loads(target.read_text())["generation"] == 41
