"""Wiring for ``token-sidecar injector``: the config, the two servers, signals.

``/mutate`` (``POST``, ``application/json``) answers every AdmissionReview with
:func:`~sidecar.injector.review.review` and logs one event per request:
``admission.reviewed`` (``decision`` injected, skipped or denied, ``reason``, the pod, its
namespace, the credentials, the problems) or ``admission.rejected`` for a request answered 400.
``/livez``, ``/readyz`` and ``/metrics`` are on the health address, in plain HTTP.

Plain HTTP on the webhook address is refused unless it is a loopback address: the API server
only calls webhooks over HTTPS, and an AdmissionReview carries the whole pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
import yaml

from sidecar.config import ServerConfig
from sidecar.errors import ConfigError
from sidecar.injector.metrics import InjectorMetrics
from sidecar.injector.review import BadReview, Outcome, review
from sidecar.injector.server import (
    CertificateReloader,
    HttpServer,
    Request,
    Response,
    Route,
    is_loopback_host,
    text,
)
from sidecar.injector.settings import InjectorConfig, InjectorSettings, parse_settings

__all__ = ["Flags", "Injector", "load_config"]

log = structlog.get_logger(__name__)

_JSON = "application/json"


@dataclass(frozen=True)
class Flags:
    """Command-line values; each set one wins over the file's ``injector:`` section."""

    listen: str | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    health_address: str | None = None


def load_config(path: Path | None, flags: Flags = Flags()) -> InjectorConfig:
    """Read the file (if any), apply the flags, validate; raise ConfigError naming each key."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError([f"--config {path}: cannot read ({exc.strerror})"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"--config {path}: not valid YAML"]) from exc
        if not isinstance(data, dict):
            raise ConfigError([f"--config {path}: the top level must be a mapping"])
    overrides = {
        key: str(value)
        for key, value in vars(flags).items()
        if value is not None  # flags win over the file
    }
    if overrides:
        section = data.get("injector") if isinstance(data.get("injector"), dict) else {}
        data = {**data, "injector": {**section, **overrides}}
    return parse_settings(data)


def _host_port(address: str) -> tuple[str, int]:
    server = ServerConfig(address=address)
    return server.host, server.port


class Injector:
    """The webhook server, its certificate watcher and the health server."""

    def __init__(self, config: InjectorConfig, *, metrics: InjectorMetrics | None = None) -> None:
        self.config = config
        settings: InjectorSettings = config.injector
        self.metrics = metrics or InjectorMetrics()
        host, port = _host_port(settings.listen)
        self.reloader: CertificateReloader | None = None
        cert, key = settings.tls_cert_file, settings.tls_key_file
        if (cert is None) != (key is None):
            raise ConfigError(["injector.tls_cert_file: give both the certificate and the key"])
        if cert is not None and key is not None:
            try:
                self.reloader = CertificateReloader(
                    cert, key, on_reload=self.metrics.certificate_loaded
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    [f"injector.tls_cert_file: cannot load the certificate and key ({exc})"]
                ) from exc
        elif not is_loopback_host(host):
            raise ConfigError(
                [
                    f"injector.listen: plain HTTP on {host} (give --tls-cert-file and "
                    "--tls-key-file; plain HTTP is served only on loopback)"
                ]
            )
        self.webhook = HttpServer(
            host,
            port,
            {"/mutate": Route(("POST",), self._mutate)},
            ssl_context=self.reloader.context if self.reloader else None,
            max_body_bytes=settings.max_request_bytes,
            read_timeout=settings.read_timeout_seconds,
            name="webhook",
        )
        health_host, health_port = _host_port(settings.health_address)
        self.health = HttpServer(
            health_host,
            health_port,
            {
                "/livez": Route(("GET", "HEAD"), self._livez),
                "/readyz": Route(("GET", "HEAD"), self._readyz),
                "/metrics": Route(("GET", "HEAD"), self._metrics),
            },
            name="health",
        )
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.webhook.start()
        await self.health.start()
        if self.reloader is not None:
            self._watch = asyncio.create_task(
                self.reloader.watch(self.config.injector.reload_interval_seconds)
            )
        log.info(
            "injector.started",
            webhook_port=self.webhook.port,
            health_port=self.health.port,
            tls=self.reloader is not None,
            mode=self.config.injector.sidecar.mode,
        )

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self.webhook.close()
        await self.health.close()

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT."""
        stop = asyncio.Event()
        with _signals(stop):
            await self.start()
            try:
                await stop.wait()
            finally:
                await self.close()
        return 0

    # -- endpoints ---------------------------------------------------------------------------

    async def _livez(self, _: Request) -> Response:
        return text(HTTPStatus.OK, "ok")

    async def _readyz(self, _: Request) -> Response:
        if self.webhook.serving:
            return text(HTTPStatus.OK, "ok")
        return text(HTTPStatus.SERVICE_UNAVAILABLE, "not serving")

    async def _metrics(self, _: Request) -> Response:
        body, content_type = self.metrics.render()
        return 200, content_type, body

    def _reject(self, reason: str, message: str) -> Response:
        self.metrics.bad_requests.labels(reason).inc()
        log.warning("admission.rejected", reason=reason, detail=message)
        return text(HTTPStatus.BAD_REQUEST, message)

    async def _mutate(self, request: Request) -> Response:
        started = time.monotonic()
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != _JSON:
            return self._reject("content_type", f"Content-Type must be {_JSON}")
        if not request.body.strip():
            return self._reject("empty_body", "the body is empty: expected an AdmissionReview")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return self._reject("not_json", "the body is not JSON")
        try:
            outcome = review(body, self.config)
        except BadReview as exc:
            return self._reject("not_admission_review", str(exc))
        seconds = time.monotonic() - started
        self.metrics.observe(outcome, seconds)
        _log(outcome, seconds)
        return 200, _JSON, json.dumps(outcome.response, separators=(",", ":")).encode()


def _log(outcome: Outcome, seconds: float) -> None:
    fields: dict[str, Any] = {
        "decision": outcome.decision,
        "reason": outcome.reason,
        "uid": outcome.uid,
        "namespace": outcome.namespace,
        "pod": outcome.pod,
        "duration_ms": round(seconds * 1000, 2),
    }
    if outcome.credentials:
        fields["credentials"] = list(outcome.credentials)
    if outcome.warnings:
        fields["warnings"] = list(outcome.warnings)
    if outcome.problems:
        fields["problems"] = list(outcome.problems)
    if outcome.decision == "denied":
        log.warning("admission.reviewed", **fields)
    else:
        log.info("admission.reviewed", **fields)


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def request_stop(name: str) -> None:
        log.info("injector.stopping", signal=name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
