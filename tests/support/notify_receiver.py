"""Real processes that receive token-change notifications, for the notify tests.

Run as a program; every mode appends one JSON line per thing received to ``--log``:

``http --port-file F --fail N``
    an HTTP server on 127.0.0.1 (a free port, written to F) that answers the first N POSTs
    with 503 and the others with 204; logs ``{"path", "body", "status"}``.
``signals --pid-file F``
    writes its pid to F (atomically), logs ``{"signal", "pid", "generation"}`` for every
    SIGHUP or SIGUSR1 (``generation`` from the ``token.json`` given with ``--token-json``,
    read when the signal arrives), and exits on SIGTERM.
``exec --fail-file F``
    one run of a notify command: logs ``{"argv", "env"}`` (the ``TOKEN_SIDECAR_*``
    variables and the names of all others); exits 1 while F holds a number above 0, which it
    decrements, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["RECEIVER", "main"]

RECEIVER = Path(__file__).resolve()


def _append(log: Path, record: dict[str, Any]) -> None:
    with log.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    temp.replace(path)


def serve_http(log: Path, port_file: Path, fail: int) -> None:
    remaining = [fail]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            status = 503 if remaining[0] > 0 else 204
            remaining[0] -= 1
            _append(log, {"path": self.path, "body": body, "status": status})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # the base's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _write_atomic(port_file, str(server.server_address[1]))
    server.serve_forever()


def record_signals(log: Path, pid_file: Path, token_json: Path | None) -> None:
    def handler(signum: int, _frame: object) -> None:
        generation = None
        if token_json is not None:
            try:
                generation = json.loads(token_json.read_text())["generation"]
            except (OSError, ValueError, KeyError):
                generation = None
        _append(
            log,
            {"signal": signal.Signals(signum).name, "pid": os.getpid(), "generation": generation},
        )

    signal.signal(signal.SIGHUP, handler)
    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _write_atomic(pid_file, f"{os.getpid()}\n")
    while True:
        time.sleep(3600)


def run_once(log: Path, fail_file: Path | None) -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith("TOKEN_SIDECAR_")}
    _append(log, {"argv": sys.argv, "env": env, "env_names": sorted(os.environ)})
    if fail_file is not None and fail_file.exists():
        left = int(fail_file.read_text() or 0)
        if left > 0:
            fail_file.write_text(str(left - 1))
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["http", "signals", "exec"])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--pid-file", type=Path)
    parser.add_argument("--token-json", type=Path)
    parser.add_argument("--fail", type=int, default=0)
    parser.add_argument("--fail-file", type=Path)
    args = parser.parse_args(argv)
    if args.mode == "http":
        serve_http(args.log, args.port_file, args.fail)
    elif args.mode == "signals":
        record_signals(args.log, args.pid_file, args.token_json)
    else:
        return run_once(args.log, args.fail_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
