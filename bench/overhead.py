"""Measurement 4: the sidecar's own time per rotation, apart from waiting on Vault and the IdP.

Method (decided here, documented in BENCHMARKS.md): the real wiring (``sidecar.app.App`` from a
real config file) against the real servers, in this process, with two changes only:

- a fast-forward clock: :meth:`FastForwardClock.wait` advances the clock by the timeout instead
  of sleeping, so rotations run back to back. Every rotation is still the real one (read the
  secret, claim with check-and-set, exchange at the token endpoint, journal, write back,
  publish the files, log, update metrics); only the sleeps between them are skipped;
- timing proxies around the refresher's ports (Vault store, token endpoint, token files,
  journal) that record wall time and process CPU time (``time.process_time``, every thread)
  of each call.

Per rotation (publish to publish, the first one with the Vault login left out):

- ``wall``: the rotation's duration;
- ``vault_wait`` / ``idp_wait``: wall time inside the awaited Vault and token endpoint calls,
  minus the CPU this process spent during them (client-side HTTP work is the sidecar's own);
- ``files``: the journal and token files (write, fsync, rename) — local, the sidecar's own;
- ``own_cpu``: all CPU the process used in the rotation: decisions, logging, metrics, httpx
  building and parsing requests. This is the sidecar's own time per rotation.

A second pass runs the same loop under ``cProfile`` (event-loop thread only) and keeps the
functions with the most own time, to show where ``own_cpu`` goes.

Run by :mod:`bench.run` as ``python -m bench.overhead CONFIG ROTATIONS OUT [--profile]``.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["FastForwardClock", "main", "measure_overhead"]


class FastForwardClock:
    """The system clock, except that waiting moves the clock forward instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        self.offset += max(timeout, 0.0)
        await asyncio.sleep(0)
        return event.is_set()


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float, float]] = []
        """(kind, ended_at, wall, cpu) per port call."""
        self.publishes: list[tuple[float, float]] = []
        """(wall, process cpu) at the end of each publish."""

    async def timed(self, kind: str, call: Awaitable[Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await call
        finally:
            end = time.perf_counter()
            self.calls.append((kind, end, end - wall, time.process_time() - cpu))

    def timed_sync(self, kind: str, call: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return call()
        finally:
            end = time.perf_counter()
            self.calls.append((kind, end, end - wall, time.process_time() - cpu))


class _Store:
    def __init__(self, inner: Any, rec: _Recorder) -> None:
        self._inner, self._rec = inner, rec

    @property
    def location(self) -> str:
        return str(self._inner.location)

    async def read(self) -> Any:
        return await self._rec.timed("vault", self._inner.read())

    async def write(self, secret: Any, data: Any) -> Any:
        return await self._rec.timed("vault", self._inner.write(secret, data))


class _Exchanger:
    def __init__(self, inner: Any, rec: _Recorder) -> None:
        self._inner, self._rec = inner, rec

    async def refresh(self, refresh_token: str, client: Any) -> Any:
        return await self._rec.timed("idp", self._inner.refresh(refresh_token, client))

    async def probe(self) -> None:
        await self._inner.probe()


class _Sink:
    def __init__(self, inner: Any, rec: _Recorder, done: Callable[[], None]) -> None:
        self._inner, self._rec, self._done = inner, rec, done

    def prepare(self) -> None:
        self._inner.prepare()

    def publish(self, token: Any) -> None:
        self._rec.timed_sync("files", lambda: self._inner.publish(token))
        self._rec.publishes.append((time.perf_counter(), time.process_time()))
        self._done()


class _Journal:
    def __init__(self, inner: Any, rec: _Recorder) -> None:
        self._inner, self._rec = inner, rec

    def load(self) -> Any:
        return self._rec.timed_sync("files", self._inner.load)

    def save(self, entry: Any) -> None:
        self._rec.timed_sync("files", lambda: self._inner.save(entry))

    def clear(self) -> None:
        self._rec.timed_sync("files", self._inner.clear)

    def open(self, holder: str) -> Any:  # once per process, not part of a rotation
        return self._inner.open(holder)

    def close(self) -> None:
        self._inner.close()


def _per_rotation(rec: _Recorder) -> list[dict[str, float]]:
    rotations = []
    for (start, cpu0), (end, cpu1) in zip(rec.publishes, rec.publishes[1:], strict=False):
        inside = [c for c in rec.calls if start < c[1] <= end]
        row = {"wall": end - start, "own_cpu": cpu1 - cpu0}
        for kind in ("vault", "idp", "files"):
            calls = [c for c in inside if c[0] == kind]
            row[f"{kind}_wall"] = sum(c[2] for c in calls)
            row[f"{kind}_cpu"] = sum(c[3] for c in calls)
            row[f"{kind}_calls"] = len(calls)
        row["vault_wait"] = max(row["vault_wall"] - row["vault_cpu"], 0.0)
        row["idp_wait"] = max(row["idp_wall"] - row["idp_cpu"], 0.0)
        row["outside_io_wall"] = row["wall"] - row["vault_wall"] - row["idp_wall"]
        rotations.append(row)
    return rotations


async def _drive(
    config: Path, rotations: int, log: Path, profiler: cProfile.Profile | None = None
) -> _Recorder:
    """Run ``rotations`` rotations after the first; ``profiler`` runs from the first publish
    (imports, configuration, login and the first rotation are start-up, section 1) to the end."""
    from sidecar.app import App  # noqa: PLC0415
    from sidecar.configload import load_settings  # noqa: PLC0415
    from sidecar.logs import configure_logging  # noqa: PLC0415
    from sidecar.refresher import Refresher  # noqa: PLC0415

    settings = load_settings(config)
    stream = log.open("w")
    configure_logging(settings.log.level, settings.log.format, stream=stream)
    app = App(settings, clock=FastForwardClock())
    rec = _Recorder()
    (refresher,) = app.refreshers
    if not isinstance(refresher, Refresher):
        raise TypeError("the overhead measurement needs a refresh_token credential")

    def done() -> None:
        if len(rec.publishes) == 1 and profiler is not None:
            profiler.enable()
        if len(rec.publishes) > rotations:
            if profiler is not None:
                profiler.disable()
            app.stop.set()

    # The refresher's ports, as App wired them, each behind a timing proxy: the store is
    # its write-back state's, the exchanger its rotation's, the sink shared with its publisher.
    writeback, publisher, rotation = refresher._wb, refresher._out, refresher._rotation
    missing = [
        n
        for obj, names in (
            (refresher, ("_sink",)),
            (writeback, ("_store", "_journal")),
            (publisher, ("_sink",)),
            (rotation, ("_exchanger",)),
        )
        for n in names
        if not hasattr(obj, n)
    ]
    if missing:
        raise RuntimeError(f"Refresher has no {', '.join(missing)}: update bench/overhead.py")
    writeback._store = _Store(writeback._store, rec)
    rotation._exchanger = _Exchanger(rotation._exchanger, rec)
    refresher._sink = publisher._sink = _Sink(refresher._sink, rec, done)
    if writeback._journal is not None:
        writeback._journal = _Journal(writeback._journal, rec)
    try:
        await refresher.run()
    finally:
        await app.close()
        stream.close()
    return rec


def main(argv: list[str]) -> int:
    config, rotations, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    profile = "--profile" in argv[3:]
    profiler = cProfile.Profile() if profile else None
    rec = asyncio.run(_drive(config, rotations, out.with_suffix(".log"), profiler))
    result: dict[str, Any] = {"rotations": _per_rotation(rec)}
    if profiler is not None:
        stats = pstats.Stats(profiler)
        rows = []
        for (filename, line, name), (_cc, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append(
                {
                    "function": f"{Path(filename).name}:{line}({name})",
                    "calls": calls,
                    "own_seconds": tottime,
                    "cumulative_seconds": cumtime,
                }
            )
        rows.sort(key=lambda r: r["own_seconds"], reverse=True)
        result["profile_top"] = rows[:25]
        result["profile_total_seconds"] = sum(r["own_seconds"] for r in rows)
    out.write_text(json.dumps(result))
    return 0


def measure_overhead(lab: Any, rotations: int, repo: Path) -> dict[str, Any]:
    """Run the probe twice in a child process (timed, then profiled) and summarise."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from bench.stats import summary  # noqa: PLC0415

    result: dict[str, Any] = {"rotations": rotations}
    for mode in ("timed", "profiled"):
        path = f"overhead-{mode}"
        lab.seed(path, "main")
        root = lab.root / "overhead" / mode
        config = lab.sidecar_config(root, [("app", path, "main")])
        out = root / "result.json"
        env = {**lab.env("overhead"), "PYTHONPATH": f"{lab.source}{os.pathsep}{repo}"}
        args = [lab.python, *lab.python_options, "-m", "bench.overhead"]
        args += [str(config), str(rotations), str(out)]
        if mode == "profiled":
            args.append("--profile")
        subprocess.run(args, env=env, cwd=root, check=True, timeout=300)
        data = json.loads(out.read_text())
        if mode == "timed":
            rows = data["rotations"]
            for key in (
                "wall",
                "own_cpu",
                "vault_wait",
                "idp_wait",
                "vault_cpu",
                "idp_cpu",
                "files_wall",
                "outside_io_wall",
            ):
                result[f"{key}_ms"] = summary([r[key] * 1000 for r in rows], digits=3)
            result["vault_calls_per_rotation"] = summary([r["vault_calls"] for r in rows], digits=0)
            result["measured_rotations"] = len(rows)
        else:
            result["profile_top"] = data["profile_top"]
            result["profile_total_seconds"] = data["profile_total_seconds"]
            result["profiled_rotations"] = len(data["rotations"])
    return result


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
