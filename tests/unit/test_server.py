"""The HTTP server on a real socket (127.0.0.1, port 0), spoken to by httpx and by raw bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from sidecar.adapters.server import HealthServer
from sidecar.metrics import Metrics
from sidecar.status import Phase, StatusBoard
from tests.support.clock import VirtualClock

NOW = 1_800_000_000.0


def ready_board() -> StatusBoard:
    board = StatusBoard()
    app = board.add("app")
    app.phase = Phase.VALID
    app.expires_at = NOW + 300
    return board


@asynccontextmanager
async def serving(board: StatusBoard, *, read_timeout: float = 5.0) -> AsyncIterator[HealthServer]:
    clock = VirtualClock(start=NOW)  # time stands still: the server only reads it
    server = HealthServer(
        "127.0.0.1",
        0,
        board,
        Metrics(board, clock, ready_margin=5.0),
        clock,
        5.0,
        read_timeout=read_timeout,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == [], f"leaked tasks: {leftover}"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]  # every test passes a coroutine function


def client(server: HealthServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", trust_env=False)


async def raw(server: HealthServer, data: bytes, *, close_write: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        if close_write:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


def test_endpoints() -> None:
    async def test() -> None:
        async with serving(ready_board()) as server, client(server) as http:
            live = await http.get("/livez")
            assert (live.status_code, live.text) == (200, "ok\n")
            assert live.headers["connection"] == "close"
            assert live.headers["content-type"] == "text/plain; charset=utf-8"

            ready = await http.get("/readyz?verbose=1")
            assert (ready.status_code, ready.text) == (200, "ok\n")

            health = await http.get("/healthz")
            assert health.status_code == 200
            assert health.headers["content-type"] == "application/json"
            assert health.json()["credentials"]["app"]["state"] == "valid"

            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain; version=")
            names = {f.name for f in text_string_to_metric_families(metrics.text)}
            assert "token_sidecar_ready" in names

    run(test)


def test_readiness_follows_the_board() -> None:
    async def test() -> None:
        board = StatusBoard()
        app = board.add("app")
        async with serving(board) as server, client(server) as http:
            first = await http.get("/readyz")
            assert first.status_code == 503
            assert "app: phase=starting, no token published yet" in first.text
            assert json.loads((await http.get("/healthz")).text)["ready"] is False

            app.phase = Phase.VALID
            app.expires_at = NOW + 60
            assert (await http.get("/readyz")).status_code == 200

            app.alive_until = 999.0  # the clock's monotonic reading is 1000
            stuck = await http.get("/livez")
            assert stuck.status_code == 503
            assert "app" in stuck.text

    run(test)


def test_head_has_headers_and_no_body() -> None:
    async def test() -> None:
        async with serving(ready_board()) as server, client(server) as http:
            response = await http.head("/metrics")
            assert response.status_code == 200
            assert int(response.headers["content-length"]) > 0
            assert response.content == b""

    run(test)


def test_unknown_path_and_method() -> None:
    async def test() -> None:
        async with serving(ready_board()) as server, client(server) as http:
            missing = await http.get("/token")
            assert (missing.status_code, missing.text) == (404, "404 Not Found\n")
            posted = await http.post("/livez")
            assert posted.status_code == 405
            assert posted.headers["allow"] == "GET, HEAD"

    run(test)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\xff\xfe garbage\r\n\r\n", b"400"),
        (b"GET /livez\r\n\r\n", b"400"),
        (b"GET livez HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /livez SPDY/3\r\n\r\n", b"400"),
        (b"GET /livez HTTP/1.1\r\n" + b"X-Long: " + b"a" * 10_000 + b"\r\n\r\n", b"431"),
        (b"GET /livez HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", b"431"),
        (b"\r\nGET /livez HTTP/1.0\nHost: x\n\n", b"200"),
        (b"GET http://pod:8099/readyz HTTP/1.1\r\n\r\n", b"200"),
    ],
    ids=[
        "binary",
        "no-version",
        "relative",
        "not-http",
        "long-header",
        "many-headers",
        "bare-lf",
        "absolute-form",
    ],
)
def test_bad_requests_are_answered_and_the_server_survives(
    request_bytes: bytes, status: bytes
) -> None:
    async def test() -> None:
        async with serving(ready_board()) as server, client(server) as http:
            answer = await raw(server, request_bytes)
            assert answer.startswith(b"HTTP/1.1 " + status + b" ")
            assert (await http.get("/livez")).status_code == 200

    run(test)


def test_clients_that_send_nothing() -> None:
    async def test() -> None:
        async with serving(ready_board(), read_timeout=0.05) as server, client(server) as http:
            assert await raw(server, b"") == b""  # closed at once: nobody to answer
            assert await raw(server, b"GET /livez HTTP/1.1\r\nHost:") == b""
            silent = await raw(server, b"", close_write=False)
            assert silent.startswith(b"HTTP/1.1 408 ")
            assert (await http.get("/livez")).status_code == 200

    run(test)


def test_close_ends_open_connections() -> None:
    async def test() -> None:
        async with serving(ready_board(), read_timeout=60) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /livez HTTP/1.1\r\n")  # and never finish the request
            await writer.drain()
            await asyncio.sleep(0.01)
            async with asyncio.timeout(2):
                await server.close()
            assert await asyncio.wait_for(reader.read(), timeout=2) == b""
            writer.close()
            await writer.wait_closed()

    run(test)


class BrokenMetrics(Metrics):
    def render(self) -> tuple[bytes, str]:
        raise RuntimeError("exposition failed")


def test_failing_endpoint_answers_500() -> None:
    async def test() -> None:
        board = ready_board()
        clock = VirtualClock(start=NOW)  # time stands still: the server only reads it
        server = HealthServer(
            "127.0.0.1", 0, board, BrokenMetrics(board, clock, ready_margin=5.0), clock, 5.0
        )
        await server.start()
        try:
            async with client(server) as http:
                with capture_logs() as logs:
                    response = await http.get("/metrics")
                assert response.status_code == 500
                assert [entry["event"] for entry in logs] == ["server.endpoint_failed"]
                assert (await http.get("/livez")).status_code == 200
        finally:
            await server.close()

    run(test)


def test_port_before_start() -> None:
    board = ready_board()
    clock = VirtualClock(start=NOW)  # time stands still: the server only reads it
    server = HealthServer(
        "127.0.0.1", 0, board, Metrics(board, clock, ready_margin=5.0), clock, 5.0
    )
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
