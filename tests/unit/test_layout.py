"""The README's layout and the import-linter contract name the same pure core."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_core() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("- **pure core**")
    end = text.index("- **adapters**", start)
    return set(re.findall(r"`(sidecar\.[a-z_.]+)`", text[start:end]))


def _contract_core() -> set[str]:
    contracts = configparser.ConfigParser()
    contracts.read(ROOT / ".importlinter", encoding="utf-8")
    modules = contracts["importlinter:contract:core-is-pure"]["source_modules"]
    return {line.strip() for line in modules.splitlines() if line.strip()}


def test_the_readme_names_the_pure_core_the_contract_enforces() -> None:
    readme, contract = _readme_core(), _contract_core()
    assert len(contract) > 10
    assert readme == contract


def test_every_core_module_exists() -> None:
    for module in _contract_core():
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module
