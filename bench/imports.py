"""Which packages a real sidecar start-up imports, and what each one costs in time and memory.

``python -m bench.imports OUT.json [sidecar arguments]`` runs the sidecar (``python -m
sidecar ...``) in this process with an import hook installed first. The hook wraps every
module's loader and records, per module, the wall time and the growth of resident memory
(``/proc/self/statm``) between the start of its loading (``create_module``: an extension
module's shared library is mapped there) and the end of its execution. Time and memory spent
loading *other* modules meanwhile are subtracted, so each module is charged only for itself,
and the modules are summed by top-level package (``pydantic_core`` apart from ``pydantic``,
standard library modules as ``stdlib``), except the sidecar's own, which stay module by
module. The JSON is written when the process exits (SIGTERM makes ``run`` exit cleanly).

The hook costs a few microseconds per module, so the totals are a little above an
un-instrumented start; they are for attribution, not for the start-up figure itself.
"""

from __future__ import annotations

import atexit
import importlib.abc
import json
import os
import runpy
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

__all__ = ["install", "main"]

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_STATM = Path("/proc/self/statm")
_STDLIB = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])


def _rss_kb() -> int:
    return int(_STATM.read_text(encoding="ascii").split()[1]) * _PAGE_KB


class _Profile:
    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # [name, t0, kb0, child_seconds, child_kb]
        self.seconds: dict[str, float] = {}
        self.kb: dict[str, int] = {}
        self.modules: dict[str, int] = {}
        self.started = time.perf_counter()
        self.rss_start = _rss_kb()

    def begin(self, name: str) -> None:
        self.stack.append([name, time.perf_counter(), _rss_kb(), 0.0, 0])

    def end(self, name: str, origin: str | None) -> None:
        if not self.stack or self.stack[-1][0] != name:
            return
        _, t0, kb0, child_s, child_kb = self.stack.pop()
        total_s, total_kb = time.perf_counter() - t0, _rss_kb() - kb0
        group = _group(name, origin)
        self.seconds[group] = self.seconds.get(group, 0.0) + total_s - child_s
        self.kb[group] = self.kb.get(group, 0) + total_kb - child_kb
        self.modules[group] = self.modules.get(group, 0) + 1
        if self.stack:
            self.stack[-1][3] += total_s
            self.stack[-1][4] += total_kb

    def dump(self, path: str) -> None:
        rows = sorted(
            (
                {
                    "package": group,
                    "modules": self.modules[group],
                    "seconds": round(self.seconds[group], 5),
                    "rss_kb": self.kb[group],
                }
                for group in self.seconds
            ),
            key=lambda row: -self.kb[str(row["package"])],
        )
        result = {
            "packages": rows,
            "import_seconds": round(sum(self.seconds.values()), 4),
            "import_rss_kb": sum(self.kb.values()),
            "rss_kb_before_imports": self.rss_start,
            "rss_kb_at_exit": _rss_kb(),
            "modules": sum(self.modules.values()),
        }
        Path(path).write_text(json.dumps(result), encoding="utf-8")


def _group(name: str, origin: str | None) -> str:
    top = name.split(".", 1)[0]
    if top == "sidecar":
        return name  # the package under test, module by module
    if origin in (None, "built-in", "frozen") or (
        origin and origin.startswith(_STDLIB) and "site-packages" not in origin
    ):
        return "stdlib"
    return top


class _Loader:
    def __init__(self, inner: Any, name: str, origin: str | None, profile: _Profile) -> None:
        self._inner, self._name, self._origin, self._profile = inner, name, origin, profile

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    def create_module(self, spec: Any) -> Any:
        self._profile.begin(self._name)
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        try:
            self._inner.exec_module(module)
        finally:
            self._profile.end(self._name, self._origin)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, profile: _Profile) -> None:
        self._profile = profile

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, fullname, spec.origin, self._profile)
                return spec
        return None


def install(out: str) -> None:
    profile = _Profile()
    sys.meta_path.insert(0, _Finder(profile))
    atexit.register(profile.dump, out)


def main(argv: list[str]) -> int:
    install(argv[0])
    sys.argv = ["sidecar", *argv[1:]]
    runpy.run_module("sidecar", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
