"""``token-sidecar --config FILE injector ...`` as a process: it serves, logs one JSON event per
admission, stops cleanly on SIGTERM, and refuses a bad configuration with exit code 2."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.injector.support import fixture
from tests.injector.test_server import FIXTURES, install
from tests.support.rawserver import TlsMaterial


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_injector_command_serves_and_stops(tmp_path: Path) -> None:
    tls = TlsMaterial(tmp_path)
    served = (tmp_path / "tls.crt", tmp_path / "tls.key")
    install(tls.good, served)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vault": {"address": "https://vault.example:8200", "auth": {"role": "apps"}},
                "log": {"level": "info", "format": "json"},
                "injector": {"listen": "0.0.0.0:1", "sidecar": {"mode": "classic"}},
            }
        ),
        encoding="utf-8",
    )
    port, health = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--config",
            str(config),
            "injector",
            "--listen",
            f"127.0.0.1:{port}",  # the flag wins over the file
            "--tls-cert-file",
            str(served[0]),
            "--tls-key-file",
            str(served[1]),
            "--health-address",
            f"127.0.0.1:{health}",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{health}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the injector did not become ready"
            time.sleep(0.1)
        body, _ = fixture(FIXTURES[0])
        verify = ssl.create_default_context(cafile=str(tls.ca))
        answer = httpx.post(f"https://127.0.0.1:{port}/mutate", json=body, verify=verify)
        assert answer.status_code == 200
        response = answer.json()["response"]
        assert response["allowed"] is True
        assert any("classic" in w for w in response["warnings"])  # the file's mode applies
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    reviewed = [e for e in events if e["event"] == "admission.reviewed"]
    assert len(reviewed) == 1
    assert reviewed[0]["decision"] == "injected"
    assert reviewed[0]["namespace"] == "shop"
    assert reviewed[0]["credentials"] == ["billing"]
    assert "injector.stopping" in [e["event"] for e in events]


def test_bad_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("injector: {sidecar: {mode: sideways}}\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(config), "injector"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "config error: injector.sidecar.mode" in result.stderr
    plain = subprocess.run(
        [sys.executable, "-m", "sidecar", "injector", "--listen", "0.0.0.0:8443"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode == 2
    assert "plain HTTP" in plain.stderr
