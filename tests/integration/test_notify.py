"""Telling the app its token changed, end to end: a real sidecar, real receiving processes.

The sidecar runs as its own process against the real OpenBao and oidc-provider with 4-second
access tokens (a rotation every few seconds). The receivers are real processes
(``tests/support/notify_receiver.py``): an HTTP server, a process that records the signals it
gets, and a command. Every test also checks that no access token the sidecar published shows
up in a body, an argument, an environment or a log line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.deployment import Deployment, wait_for
from tests.support.notify_receiver import RECEIVER

pytestmark = pytest.mark.integration


class Receiver:
    """One receiving process; only the processes it started are ever signalled."""

    def __init__(self, root: Path, mode: str, *args: str, name: str = "") -> None:
        self.root = root
        self.log = root / f"{name or mode}.jsonl"
        self.mode = mode
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(RECEIVER), self.mode, "--log", str(self.log), *self.args],
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


class Watch:
    """The sidecar's files as the app sees them: every token and generation published."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.tokens: set[str] = set()

    def generation(self) -> int | None:
        try:
            document = json.loads((self.dep.output_dir / "token.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        self.tokens.add(document["access_token"])
        value = document.get("generation")
        return value if isinstance(value, int) else None

    def until(self, predicate: Callable[[], Any], timeout: float) -> Any:
        def watched() -> Any:
            self.generation()
            return predicate()

        return wait_for(watched, timeout=timeout, interval=0.05)

    def assert_no_token_in(self, *texts: str) -> None:
        assert len(self.tokens) >= 2, "the test saw too few tokens to prove anything"
        for token in self.tokens:
            for text in texts:
                assert token not in text


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def start(receivers: list[Receiver], receiver: Receiver) -> Receiver:
    receivers.append(receiver)
    receiver.start()
    return receiver


def metric(dep: Deployment, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in dep.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no {name}{{{wanted}}}")


def test_http_receiver_failing_twice_gets_every_generation_after_retries(
    deployment: Deployment, receivers: list[Receiver], tmp_path: Path
) -> None:
    dep = deployment
    port_file = tmp_path / "port"
    receiver = start(
        receivers, Receiver(tmp_path, "http", "--port-file", str(port_file), "--fail", "2")
    )
    assert wait_for(port_file.exists, timeout=10)
    url = f"http://127.0.0.1:{port_file.read_text()}/token-changed"
    # 10-second tokens: a rotation every 6 to 7 s, so the retries (after about 1 s, then
    # 2 s) happen before a newer generation supersedes the refused one.
    dep.idp.set_ttl(access_token=10)
    dep.write_config(notify={"http": {"url": url}, "min_interval_seconds": 0.2})
    dep.start()
    watch = Watch(dep)

    def acknowledged() -> list[dict[str, Any]]:
        return [r for r in receiver.records() if r["status"] == 204]

    # The first token of a fresh volume is not announced; the next ones are.
    assert watch.until(lambda: len(acknowledged()) >= 3, timeout=90), dep.logs()
    records = receiver.records()
    assert [r["status"] for r in records[:3]] == [503, 503, 204]
    bodies = [json.loads(r["body"]) for r in records]
    assert all(set(b) == {"credential", "generation", "expires_at"} for b in bodies)
    assert all(
        b["credential"] == "billing" and r["path"] == "/token-changed"
        for b, r in zip(bodies, records, strict=True)
    )
    # The two refused attempts and the accepted retry carry the same generation.
    assert bodies[0]["generation"] == bodies[1]["generation"] == bodies[2]["generation"] >= 2
    accepted = [json.loads(r["body"])["generation"] for r in acknowledged()]
    assert accepted == sorted(set(accepted)), "a generation was acknowledged twice"
    # Caught up: what the app acknowledged last is what token.json says (or one behind it).
    current = watch.generation()
    assert current is not None and current - 1 <= accepted[-1] <= current
    assert metric(dep, "token_sidecar_notify_total", method="http", outcome="status") == 2
    assert metric(dep, "token_sidecar_notify_total", method="http", outcome="success") >= 3
    assert metric(dep, "token_sidecar_notify_consecutive_failures", method="http") == 0
    assert dep.stop() == 0
    watch.assert_no_token_in(receiver.log.read_text(), dep.logs())
    events = [json.loads(line) for line in dep.logs().splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "notify.failed"]
    assert [e["error"] for e in failed] == ["status", "status"]
    assert any(e.get("event") == "notify.sent" for e in events)


def test_signal_reaches_the_app_again_after_it_restarts_with_a_new_pid(
    deployment: Deployment, receivers: list[Receiver], tmp_path: Path
) -> None:
    dep = deployment
    pid_file = tmp_path / "app.pid"
    token_json = dep.output_dir / "token.json"
    args = ("--pid-file", str(pid_file), "--token-json", str(token_json))
    first = start(receivers, Receiver(tmp_path, "signals", *args, name="first"))
    dep.write_config(
        notify={
            "signal": {"pid_file": str(pid_file), "signal": "SIGUSR1"},
            "min_interval_seconds": 0,
        }
    )
    dep.start()
    watch = Watch(dep)
    assert watch.until(lambda: len(first.records()) >= 2, timeout=60), dep.logs()
    old_pid = first.records()[0]["pid"]
    assert first.process is not None and old_pid == first.process.pid

    # The app restarts: for a moment the pid file names a process that is gone.
    first.stop()
    time.sleep(4)  # at least one rotation while no app runs
    second = start(receivers, Receiver(tmp_path, "signals", *args, name="second"))
    assert watch.until(lambda: len(second.records()) >= 2, timeout=60), dep.logs()
    assert {r["pid"] for r in second.records()} == {second.process.pid if second.process else 0}
    assert second.process is not None and second.process.pid != old_pid
    for record in first.records() + second.records():
        assert record["signal"] == "SIGUSR1"
        assert isinstance(record["generation"], int) and record["generation"] >= 2
    # The new app was told about generations newer than any the old one saw.
    assert min(r["generation"] for r in second.records()) > max(
        r["generation"] for r in first.records()
    )
    assert dep.stop() == 0
    events = [json.loads(line) for line in dep.logs().splitlines() if line.startswith("{")]
    errors = {e["error"] for e in events if e.get("event") == "notify.failed"}
    assert errors <= {"no_process"}, errors
    watch.assert_no_token_in(dep.logs())


def test_exec_runs_the_command_once_per_generation_and_retries_a_failure(
    deployment: Deployment, receivers: list[Receiver], tmp_path: Path
) -> None:
    dep = deployment
    log = tmp_path / "exec.jsonl"
    fail_file = tmp_path / "fail"
    fail_file.write_text("2")
    dep.idp.set_ttl(access_token=8)  # retries (after about 1 s, then 2 s) before a new token
    command = [
        sys.executable,
        str(RECEIVER),
        "exec",
        "--log",
        str(log),
        "--fail-file",
        str(fail_file),
    ]
    dep.write_config(
        notify={"exec": {"command": command, "timeout_seconds": 20}, "min_interval_seconds": 0}
    )
    dep.start()
    watch = Watch(dep)

    def runs() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    assert watch.until(lambda: len(runs()) >= 5, timeout=90), dep.logs()
    assert dep.stop() == 0
    records = runs()
    generations = [int(r["env"]["TOKEN_SIDECAR_GENERATION"]) for r in records]
    # Runs 1 and 2 failed (exit 1) and were retried with the same generation; after that one
    # run per generation, in order, none twice.
    assert generations[0] == generations[1] == generations[2]
    assert generations[2:] == sorted(set(generations[2:]))
    for record in records:
        assert record["argv"] == command[1:]  # the interpreter runs the script: argv[0]
        assert set(record["env"]) == {
            "TOKEN_SIDECAR_CREDENTIAL",
            "TOKEN_SIDECAR_GENERATION",
            "TOKEN_SIDECAR_EXPIRES_AT",
            "TOKEN_SIDECAR_TOKEN_FILE",
        }
        assert record["env"]["TOKEN_SIDECAR_TOKEN_FILE"] == str(dep.output_dir / "token.json")
        # None of the sidecar's own environment (which may hold VAULT_TOKEN) leaks through.
        assert set(record["env_names"]) <= {"PATH", "LANG", *record["env"]}
    watch.assert_no_token_in(log.read_text(), dep.logs())
    events = [json.loads(line) for line in dep.logs().splitlines() if line.startswith("{")]
    assert [e["error"] for e in events if e.get("event") == "notify.failed"] == [
        "exit_status",
        "exit_status",
    ]


def test_a_burst_of_rotations_becomes_one_notification(
    deployment: Deployment, receivers: list[Receiver], tmp_path: Path
) -> None:
    dep = deployment
    port_file = tmp_path / "port"
    receiver = start(receivers, Receiver(tmp_path, "http", "--port-file", str(port_file)))
    assert wait_for(port_file.exists, timeout=10)
    url = f"http://127.0.0.1:{port_file.read_text()}/"
    dep.idp.set_ttl(access_token=2)  # a rotation about every 1.3 s
    dep.write_config(
        notify={"http": {"url": url}, "min_interval_seconds": 8, "max_delay_seconds": 120},
    )
    dep.start()
    watch = Watch(dep)
    assert watch.until(lambda: (watch.generation() or 0) >= 5, timeout=60), dep.logs()
    dep.idp.set_ttl(access_token=300)  # the burst ends with the next rotation
    settled = watch.until(receiver.records, timeout=30)
    assert settled, dep.logs()
    last = watch.generation()
    time.sleep(2)
    records = receiver.records()
    assert len(records) == 1, records
    announced = json.loads(records[0]["body"])["generation"]
    assert announced == last == watch.generation()
    assert announced >= 6  # generations 2..last, several rotations, one notification
    assert metric(dep, "token_sidecar_notify_total", method="http", outcome="success") == 1
    assert metric(dep, "token_sidecar_notify_acknowledged_generation", method="http") == announced
    assert metric(dep, "token_sidecar_token_generation") == announced
    assert dep.stop() == 0
    watch.assert_no_token_in(receiver.log.read_text(), dep.logs())


def test_signal_names_are_checked_before_start(deployment: Deployment, tmp_path: Path) -> None:
    dep = deployment
    dep.write_config(notify={"signal": {"pid_file": str(tmp_path / "pid"), "signal": "SIGKILL"}})
    result = dep.cli("check")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "notify.signal.signal" in result.stdout + result.stderr
