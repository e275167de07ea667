"""The Dockerfile's promises, read from the file (no Docker engine is needed, or available here)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

import yaml

from tests.chart.rendering import CHART_DIR, ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages and keyword == "ARG":
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text(encoding="utf-8"))
FINAL = STAGES[-1]


def test_multi_stage_with_a_slim_python_base() -> None:
    assert len(STAGES) >= 2
    builder = STAGES[0]
    assert builder.name
    assert FINAL.name is None or FINAL.name != builder.name
    base = FINAL.base.replace("${PYTHON_IMAGE}", GLOBAL_ARGS.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.1[1-9][.\d]*-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base


def test_builder_makes_wheels_and_the_final_stage_only_installs_them() -> None:
    assert any("pip wheel" in run for run in STAGES[0].all("RUN"))
    runs = " ".join(FINAL.all("RUN"))
    assert "--no-index" in runs
    assert "--find-links" in runs
    # No source tree, compiler or package manager in the final stage.
    assert not FINAL.all("COPY") or all("--from=" in c for c in FINAL.all("COPY"))
    for word in ("apt-get", "apk ", "gcc", "build-essential", "git "):
        assert word not in runs, word


def test_every_pip_install_skips_the_cache() -> None:
    for stage in STAGES:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;", run):
                if re.search(r"pip\d*(\s+-\S+)*\s+(install|wheel)\b", command):
                    assert "--no-cache-dir" in command, command


def test_runs_as_a_numeric_non_root_user_matching_the_chart() -> None:
    [user] = FINAL.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["sidecar"]["securityContext"]["runAsUser"] == int(uid)
    assert values["sidecar"]["securityContext"]["runAsGroup"] == int(gid)
    # USER comes after every RUN, so nothing runs as root once it is set.
    keywords = [kw for kw, _ in FINAL.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def test_read_only_root_filesystem_settings() -> None:
    env = " ".join(FINAL.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert not FINAL.all("VOLUME")


def test_entrypoint_command_and_port() -> None:
    [entrypoint] = FINAL.all("ENTRYPOINT")
    [cmd] = FINAL.all("CMD")
    assert json.loads(entrypoint) == ["token-sidecar"]
    assert json.loads(cmd) == ["run", "--config", "/etc/token-sidecar/config.yaml"]
    [port] = FINAL.all("EXPOSE")
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert int(port) == values["sidecar"]["port"]


def test_oci_labels() -> None:
    labels = dict(word.split("=", 1) for label in FINAL.all("LABEL") for word in shlex.split(label))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key


def test_build_context_is_only_the_package() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "sidecar"}
    copied = " ".join(c for stage in STAGES for c in stage.all("COPY"))
    for name in allowed:
        assert name in copied
