"""Run the operator commands (``seed``, ``status``, ``retire``) as an operator would.

:class:`OperatorCli` runs ``python -m sidecar`` with a deployment's configuration and the
``token`` auth method (``VAULT_TOKEN``, a token limited to the credential's policy, as an
operator's own would be), with ``--output json`` unless told otherwise. A running command's
stdout is read line by line so a test can act on an event (the user code) while the command
waits for the user.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from tests.support.deployment import Deployment, clean_env

__all__ = ["OperatorCli", "Running"]


@dataclass
class Running:
    """A command in progress: its events as they come, its output when it ends."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stdout: list[str] = field(default_factory=list)
    stderr: str = ""
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_readers(self) -> None:
        def pump(stream: TextIO, sink: list[str] | None) -> None:
            for line in stream:
                if sink is not None:
                    sink.append(line)
                    self.lines.put(line)
                else:
                    self.stderr += line
            if sink is not None:
                self.lines.put(None)

        assert self.process.stdout is not None and self.process.stderr is not None
        self._threads = [
            threading.Thread(target=pump, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=pump, args=(self.process.stderr, None), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the JSON event ``name`` on stdout; fail on end of output or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no {name} event within {timeout} s") from None
            if line is None:
                self.lines.put(None)
                raise AssertionError(
                    f"the command ended without a {name} event: {''.join(self.stdout)}"
                    f"{self.stderr[-2000:]}"
                )
            event = json.loads(line)
            if event.get("event") == name:
                return dict(event)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._close()
        return code

    def _close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout if line.strip()]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._close()


@dataclass
class OperatorCli:
    """Operator commands against a deployment's configuration."""

    dep: Deployment
    vault_token: str
    extra_env: dict[str, str] = field(default_factory=dict)
    started: list[Running] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            **clean_env(),
            "TOKEN_SIDECAR_VAULT__AUTH__METHOD": "token",
            "VAULT_TOKEN": self.vault_token,
            **self.extra_env,
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sidecar", "--config", str(self.dep.config_path), *args]

    def start(self, *args: str, output: str = "json") -> Running:
        process = subprocess.Popen(
            [*self.command(*args), "--output", output],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env(),
        )
        running = Running(process)
        running.start_readers()
        self.started.append(running)
        return running

    def run(self, *args: str, output: str = "json", timeout: float = 60.0) -> Running:
        running = self.start(*args, output=output)
        running.wait(timeout)
        return running

    def close(self) -> None:
        for running in self.started:
            running.kill()
