"""A runtime-only interpreter for the sidecar under test: what the container image ships.

The development virtualenv holds test and lint tools too (``rich``, ``click``, ``attrs``,
``pygments`` ...), and some runtime libraries import them when they are present (structlog
imports ``rich`` for pretty tracebacks), so a sidecar started from it imports several megabytes
that the image does not contain. The bench therefore runs every sidecar from a separate
virtualenv holding only the runtime dependency closure of ``pyproject.toml``'s
``[project] dependencies``, with the very same distributions the development virtualenv has,
copied file by file from their ``RECORD`` (no network, no resolver), and byte-compiled as
``pip install`` does in the Dockerfile. The ``sidecar`` package itself comes from
``PYTHONPATH`` (the source under test).

The virtualenv is cached in ``bench/.runtime/`` and rebuilt when the dependency closure,
its versions or the interpreter change.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

__all__ = ["runtime_python"]

_CACHE = Path(__file__).resolve().parent / ".runtime"


def _wanted(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""}))


def _closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """Installed distributions needed by ``requirements`` (extras and markers evaluated)."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(Requirement(text), frozenset[str]()) for text in requirements]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _wanted(requirement, parent_extras):
            continue
        extras = frozenset(requirement.extras)
        key = (requirement.name.lower().replace("_", "-"), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(f"{requirement.name} is not installed in {sys.prefix}") from exc
        found[dist.metadata["Name"].lower()] = dist
        pending.extend((Requirement(text), extras) for text in dist.requires or [])
    return found


def _purelib(python: Path) -> Path:
    return Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )


def runtime_python(source: Path, options: tuple[str, ...] = ()) -> Path:
    """The interpreter of a virtualenv holding only the sidecar's runtime dependencies.

    With ``-OO`` among ``options`` the libraries are byte-compiled for it too, as an image run
    with ``PYTHONOPTIMIZE=2`` would need.
    """
    project = tomllib.loads((source / "pyproject.toml").read_text())
    dists = _closure(list(project["project"]["dependencies"]))
    fingerprint = hashlib.sha256(
        json.dumps([sys.version, sorted((n, d.version) for n, d in dists.items())]).encode()
    ).hexdigest()[:16]
    venv = _CACHE / f"venv-{fingerprint}"
    python = venv / "bin" / "python"
    optimized = venv / ".optimized"
    if python.exists() and (venv / ".complete").exists():
        if "-OO" in options and not optimized.exists():
            compileall.compile_dir(str(_purelib(python)), quiet=2, workers=0, optimize=2)
            optimized.touch()
        return python
    shutil.rmtree(_CACHE, ignore_errors=True)
    _CACHE.mkdir(parents=True)
    (_CACHE / ".gitignore").write_text("*\n")
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    target = _purelib(python)
    here = Path(sysconfig.get_paths()["purelib"])
    for dist in dists.values():
        for file in dist.files or []:
            origin = Path(str(dist.locate_file(file)))
            try:
                relative = origin.resolve().relative_to(here.resolve())
            except ValueError:
                continue  # scripts in bin/ and the like: not needed to import the library
            if "__pycache__" in relative.parts or not origin.is_file():
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, destination)
    compileall.compile_dir(str(target), quiet=2, workers=0)
    if "-OO" in options:
        compileall.compile_dir(str(target), quiet=2, workers=0, optimize=2)
        optimized.touch()
    (venv / ".complete").write_text(
        "\n".join(f"{n} {d.version}" for n, d in sorted(dists.items())) + "\n"
    )
    return python
