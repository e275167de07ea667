"""Run the unit suite on every other Python the package claims that this machine has.

``requires-python`` in pyproject.toml says which minor versions the package claims (from its
lower bound up to :data:`NEWEST`); the main ``.venv`` covers its own interpreter. For each other
claimed version the interpreter is looked up on ``PATH`` (``python3.X``), then under pyenv
(``$PYENV_ROOT/versions/3.X.*``), and must really run: a pyenv shim for a version that is not
active does not count. A version the machine lacks is skipped with a message saying so; one it
has gets its own ``.venv-3.X`` (the package and its ``unit`` extra, reinstalled when
pyproject.toml changes) and ``pytest tests/unit``. Exit status: non-zero when any run failed.

``make test`` runs it after the main suite, so a regression on a newer Python shows in CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

__all__ = ["NEWEST", "claimed_minors", "find_interpreter", "main"]

ROOT = Path(__file__).resolve().parent.parent
NEWEST = 14
"""The newest 3.x release this script looks for."""


def claimed_minors(requires_python: str) -> list[int]:
    """The 3.x minor versions ``requires-python`` (``>=3.11``, ``>=3.11,<3.14``) admits."""
    low, high = 0, NEWEST
    for clause in requires_python.split(","):
        match = re.fullmatch(r"\s*(>=|<|<=)\s*3\.(\d+)\s*", clause)
        if match is None:
            raise ValueError(f"requires-python: cannot read {clause.strip()!r}")
        operator, minor = match.group(1), int(match.group(2))
        if operator == ">=":
            low = max(low, minor)
        elif operator == "<":
            high = min(high, minor - 1)
        else:
            high = min(high, minor)
    return list(range(low, high + 1))


def _runs_as(candidate: str, minor: int) -> bool:
    try:
        result = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0 and result.stdout.strip() == str(minor)


def find_interpreter(minor: int) -> str | None:
    """A working ``python3.<minor>``: on PATH first, then the newest pyenv install."""
    candidates = [f"python3.{minor}"]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installs = sorted(
        pyenv.glob(f"3.{minor}.*"),
        key=lambda p: [int(part) if part.isdigit() else -1 for part in p.name.split(".")],
        reverse=True,
    )
    candidates += [str(p / "bin" / f"python3.{minor}") for p in installs]
    return next((c for c in candidates if _runs_as(c, minor)), None)


def _venv(interpreter: str, minor: int) -> Path:
    """``.venv-3.X`` with the package and its unit-test dependencies, current with pyproject."""
    venv = ROOT / f".venv-3.{minor}"
    stamp = venv / ".installed"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return venv
    print(f"  installing the package and its unit extra into {venv.name}", flush=True)
    steps = [[interpreter, "-m", "venv", str(venv)]]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    steps += [[*pip, "--upgrade", "pip"], [*pip, "-e", f"{ROOT}[unit]"]]
    for step in steps:
        done = subprocess.run(step, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # pip's chatter only when it matters
            print(done.stdout + done.stderr, file=sys.stderr)
            raise SystemExit(f"cannot prepare {venv.name}: {' '.join(step[1:4])} failed")
    stamp.touch()
    return venv


def main() -> int:
    with (ROOT / "pyproject.toml").open("rb") as file:
        requires = tomllib.load(file)["project"]["requires-python"]
    failed: list[str] = []
    for minor in claimed_minors(requires):
        if minor == sys.version_info[1]:
            continue  # the main .venv's interpreter: the whole suite ran on it already
        interpreter = find_interpreter(minor)
        if interpreter is None:
            print(f"unit tests on Python 3.{minor}: skipped, no python3.{minor} on this machine")
            continue
        print(f"unit tests on Python 3.{minor} ({interpreter})", flush=True)
        venv = _venv(interpreter, minor)
        result = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pytest",
                "tests/unit",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=ROOT,
            check=False,
        )
        if result.returncode != 0:
            failed.append(f"3.{minor}")
    if failed:
        print(f"unit tests failed on Python {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
