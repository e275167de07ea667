"""The injector's servers for real: HTTPS with certificates made here, httpx as the API server,
a certificate rotated on disk, the 400s, the probes and the metrics by namespace."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from sidecar.errors import ConfigError
from sidecar.injector.app import Flags, Injector, load_config
from tests.injector.support import FIXTURES, apply, fixture, schema_problems
from tests.support.podsecurity import restricted_violations
from tests.support.rawserver import TlsMaterial

VAULT = {"address": "https://vault.vault.svc:8200", "auth": {"role": "default-role"}}


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def install(source: tuple[Path, Path], served: tuple[Path, Path]) -> None:
    """Replace the served pair as the kubelet does: each file renamed into place."""
    for src, dst in zip(source, served, strict=True):
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def write_config(path: Path, **injector: Any) -> Path:
    import yaml  # noqa: PLC0415

    path.write_text(yaml.safe_dump({"vault": VAULT, "injector": injector}), encoding="utf-8")
    return path


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    (tmp_path / "ca1").mkdir()
    return TlsMaterial(tmp_path / "ca1")


@pytest.fixture
def served(tmp_path: Path, tls: TlsMaterial) -> tuple[Path, Path]:
    pair = (tmp_path / "tls.crt", tmp_path / "tls.key")
    install(tls.good, pair)
    return pair


@asynccontextmanager
async def injector(config_file: Path, flags: Flags | None = None) -> AsyncIterator[Injector]:
    server = Injector(load_config(config_file, flags or Flags()))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def client(ca: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca)), timeout=10)


def webhook_url(server: Injector) -> str:
    return f"https://127.0.0.1:{server.webhook.port}/mutate"


def health_url(server: Injector, path: str) -> str:
    return f"http://127.0.0.1:{server.health.port}{path}"


def tls_flags(served: tuple[Path, Path]) -> Flags:
    return Flags("127.0.0.1:0", served[0], served[1], "127.0.0.1:0")


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_admission_over_tls(path: Path, tmp_path: Path, tls: TlsMaterial, served: Any) -> None:
    body, _ = fixture(path)

    async def test() -> None:
        config = write_config(tmp_path / "config.yaml")
        async with injector(config, tls_flags(served)) as server, client(tls.ca) as http:
            with capture_logs() as logs:
                answer = await http.post(webhook_url(server), json=body)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "application/json"
            review = answer.json()
            assert review["apiVersion"] == body["apiVersion"]  # answered in the version asked
            assert review["response"]["uid"] == body["request"]["uid"]
            assert review["response"]["allowed"] is True
            patch = json.loads(base64.b64decode(review["response"]["patch"]))
            assert patch
            events = [e for e in logs if e["event"] == "admission.reviewed"]
            assert len(events) == 1
            assert events[0]["decision"] == "injected"
            assert events[0]["namespace"] == body["request"]["namespace"]

        class Answer:
            response = review

        pod = apply(body, Answer())  # type: ignore[arg-type]
        assert schema_problems(pod) == []
        assert restricted_violations(pod) == []

    run(test)


def test_bad_requests_get_400(tmp_path: Path, tls: TlsMaterial, served: Any) -> None:
    body, _ = fixture(FIXTURES[0])

    async def test() -> None:
        config = write_config(tmp_path / "config.yaml")
        async with injector(config, tls_flags(served)) as server, client(tls.ca) as http:
            url = webhook_url(server)
            cases = [
                (
                    {"content": json.dumps(body), "headers": {"content-type": "text/plain"}},
                    "Content-Type",
                ),
                ({"content": b"", "headers": {"content-type": "application/json"}}, "empty"),
                ({"content": b"{", "headers": {"content-type": "application/json"}}, "not JSON"),
                ({"json": {"kind": "Pod"}}, "AdmissionReview"),
            ]
            for kwargs, words in cases:
                with capture_logs() as logs:
                    answer = await http.post(url, **kwargs)
                assert answer.status_code == 400, kwargs
                assert words in answer.text
                assert [e["event"] for e in logs] == ["admission.rejected"]
            assert (await http.get(url)).status_code == 405
            ok = await http.post(
                url,
                content=json.dumps(body),
                headers={"content-type": "application/json; charset=utf-8"},
            )
            assert ok.status_code == 200
            metrics = (await http.get(health_url(server, "/metrics"))).text
            assert 'token_sidecar_injector_bad_requests_total{reason="content_type"} 1.0' in metrics
            assert 'token_sidecar_injector_bad_requests_total{reason="empty_body"} 1.0' in metrics

    run(test)


def test_health_and_metrics_by_namespace(tmp_path: Path, tls: TlsMaterial, served: Any) -> None:
    injected, _ = fixture(FIXTURES[0])
    denied = json.loads(json.dumps(injected))
    denied["request"]["namespace"] = "team-b"
    denied["request"]["object"]["metadata"]["annotations"]["token-sidecar.io/bogus"] = "x"

    async def test() -> None:
        config = write_config(tmp_path / "config.yaml")
        async with injector(config, tls_flags(served)) as server, client(tls.ca) as http:
            assert (await http.get(health_url(server, "/livez"))).status_code == 200
            assert (await http.get(health_url(server, "/readyz"))).status_code == 200
            for body in (injected, injected, denied):
                assert (await http.post(webhook_url(server), json=body)).status_code == 200
            answer = (await http.post(webhook_url(server), json=denied)).json()["response"]
            assert answer["allowed"] is False
            assert "token-sidecar.io/bogus" in answer["status"]["message"]
            metrics = (await http.get(health_url(server, "/metrics"))).text
            namespace = injected["request"]["namespace"]
            assert (
                f'token_sidecar_injector_injections_total{{namespace="{namespace}"}} 2.0' in metrics
            )
            assert 'token_sidecar_injector_denials_total{namespace="team-b"} 2.0' in metrics
            assert 'token_sidecar_injector_admissions_total{decision="denied"} 2.0' in metrics
            assert "token_sidecar_injector_certificate_expiry_timestamp_seconds" in metrics
            # The health port is separate and plain; the webhook port speaks only TLS.
            with pytest.raises(httpx.HTTPError):
                await http.post(f"http://127.0.0.1:{server.webhook.port}/mutate", json=injected)
            assert (await http.get(health_url(server, "/mutate"))).status_code == 404

    run(test)


def test_certificate_rotated_on_disk_is_served(
    tmp_path: Path, tls: TlsMaterial, served: Any
) -> None:
    (tmp_path / "ca2").mkdir()
    rotated = TlsMaterial(tmp_path / "ca2")
    body, _ = fixture(FIXTURES[0])

    async def test() -> None:
        config = write_config(tmp_path / "config.yaml", reload_interval_seconds=0.05)
        async with injector(config, tls_flags(served)) as server:
            async with client(tls.ca) as old:
                assert (await old.post(webhook_url(server), json=body)).status_code == 200

            # Half a rotation: the new certificate beside the old key. The server keeps
            # serving the old pair rather than a mismatched one.
            install((rotated.good[0], served[1]), (served[0], tmp_path / "unused.key"))
            await asyncio.sleep(0.3)
            async with client(tls.ca) as old:
                assert (await old.post(webhook_url(server), json=body)).status_code == 200

            install(rotated.good, served)

            async def new_certificate_served() -> None:
                while True:
                    try:
                        async with client(rotated.ca) as new:
                            answer = await new.post(webhook_url(server), json=body)
                            assert answer.status_code == 200
                            return
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)

            await asyncio.wait_for(new_certificate_served(), 30)
            async with client(tls.ca) as old:
                with pytest.raises(httpx.ConnectError):
                    await old.post(webhook_url(server), json=body)
            metrics = (await old_metrics(server)).text
            assert (
                'token_sidecar_injector_certificate_loads_total{outcome="success"} 2.0' in metrics
            )
            assert (
                'token_sidecar_injector_certificate_loads_total{outcome="failure"} 1.0' in metrics
            )

    run(test)


async def old_metrics(server: Injector) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(health_url(server, "/metrics"))


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"injector\.listen: plain HTTP on 0\.0\.0\.0"):
        Injector(load_config(config, Flags(listen="0.0.0.0:0", health_address="127.0.0.1:0")))
    with pytest.raises(ConfigError, match="both the certificate and the key"):
        Injector(load_config(config, Flags(listen="127.0.0.1:0", tls_cert_file=tmp_path)))
    body, _ = fixture(FIXTURES[0])

    async def test() -> None:
        loopback = Flags(listen="127.0.0.1:0", health_address="127.0.0.1:0")
        async with injector(config, loopback) as server, httpx.AsyncClient() as http:
            answer = await http.post(f"http://127.0.0.1:{server.webhook.port}/mutate", json=body)
            assert answer.status_code == 200
            assert answer.json()["response"]["allowed"] is True

    run(test)


def test_config_problems_name_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "vault: {address: 'ftp://x', auth: {method: approle}}\n"
        "credentials: []\n"
        "injector: {listen: nowhere, sidecar: {mode: sideways, tokens_size_limit: lots}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = "\n".join(raised.value.problems)
    for key in (
        "credentials: unknown key",
        "vault.auth.method",
        "injector.listen",
        "injector.sidecar.mode",
        "injector.sidecar.tokens_size_limit",
    ):
        assert key in text, text


async def raw_exchange(port: int, data: bytes, ca: Path) -> bytes:
    """Send raw bytes over TLS and return everything the server answers."""
    context = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"411",
        ),
        (b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", b"400"),
        (b"POST /mutate HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", b"431"),
        (b"BREW /mutate HTCPCP/1.0\r\n\r\n", b"400"),
        (b"POST /mutate HTTP/1.1\r\nContent-Length: 10\r\n\r\n{", b"408"),
    ],
    ids=["too-large", "chunked", "bad-length", "header-flood", "not-http", "body-stalls"],
)
def test_hostile_requests_are_answered_and_the_server_survives(
    request_bytes: bytes, status: bytes, tmp_path: Path, tls: TlsMaterial, served: Any
) -> None:
    body, _ = fixture(FIXTURES[0])

    async def test() -> None:
        config = write_config(
            tmp_path / "config.yaml", max_request_bytes=65536, read_timeout_seconds=1
        )
        async with injector(config, tls_flags(served)) as server:
            answer = await raw_exchange(server.webhook.port, request_bytes, tls.ca)
            assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == status, answer[:200]
            async with client(tls.ca) as http:
                assert (await http.post(webhook_url(server), json=body)).status_code == 200

    run(test)


def test_a_secret_volume_update_is_picked_up(tmp_path: Path, tls: TlsMaterial) -> None:
    """The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> a timestamped directory,
    and an update swaps ..data to a new directory in one rename."""
    (tmp_path / "ca2").mkdir()
    rotated = TlsMaterial(tmp_path / "ca2")
    volume = tmp_path / "volume"
    volume.mkdir()

    def publish(pair: tuple[Path, Path], stamp: str) -> None:
        target = volume / f"..{stamp}"
        target.mkdir()
        shutil.copyfile(pair[0], target / "tls.crt")
        shutil.copyfile(pair[1], target / "tls.key")
        link = volume / "..data_tmp"
        link.symlink_to(target.name)
        link.replace(volume / "..data")

    publish(tls.good, "2026_01_01_00_00_00.1")
    for name in ("tls.crt", "tls.key"):
        (volume / name).symlink_to(f"..data/{name}")
    body, _ = fixture(FIXTURES[0])

    async def test() -> None:
        config = write_config(tmp_path / "config.yaml", reload_interval_seconds=0.05)
        flags = Flags("127.0.0.1:0", volume / "tls.crt", volume / "tls.key", "127.0.0.1:0")
        async with injector(config, flags) as server:
            async with client(tls.ca) as old:
                assert (await old.post(webhook_url(server), json=body)).status_code == 200
            publish(rotated.good, "2026_02_01_00_00_00.2")

            async def served_by_new_ca() -> None:
                while True:
                    try:
                        async with client(rotated.ca) as new:
                            await new.post(webhook_url(server), json=body)
                            return
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)

            await asyncio.wait_for(served_by_new_ca(), 30)

    run(test)
