"""kind, Docker and kubectl for the end-to-end test, every call bounded by a timeout.

- :func:`missing_prerequisites` says what is missing (a Docker engine, ``kind``, ``kubectl``) so
  that the test can skip with a message naming each;
- :class:`KindCluster` creates a cluster under a fresh unique name with its own kubeconfig file
  (the user's ``~/.kube/config`` is never read or written) and deletes exactly that cluster;
- :func:`build_image` and :meth:`KindCluster.load_image` put the sidecar image into it;
- :class:`Kubectl` wraps ``kubectl`` for that cluster only (``--kubeconfig`` and ``--context``
  on every call), :func:`wait_until` polls with a deadline.

Error messages carry the command and its stderr, never its stdout (which may hold a secret),
and pass through :func:`redact`, which hides every value given to :func:`register_secret`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "ROOT",
    "E2EError",
    "KindCluster",
    "Kubectl",
    "Result",
    "build_image",
    "missing_prerequisites",
    "redact",
    "register_secret",
    "remove_image",
    "run",
    "skip_message",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
_TAIL = 2000
_SECRETS: set[str] = set()
_T = TypeVar("_T")


class E2EError(RuntimeError):
    """A command failed or a wait ran out; the message says which and why."""


def register_secret(value: str) -> str:
    """Remember a secret so that :func:`redact` hides it from messages and diagnostics."""
    if len(value) >= 8:
        _SECRETS.add(value)
    return value


def redact(text: str) -> str:
    for value in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _describe(command: Sequence[str]) -> str:
    return shlex.join(str(part) for part in command)


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL else "..." + text[-_TAIL:]


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = field(repr=False)
    stderr: str


def run(
    command: Sequence[str],
    *,
    timeout: float,
    stdin: str | None = None,
    check: bool = True,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run a command to completion; it is killed when ``timeout`` seconds pass."""
    argv = [str(part) for part in command]
    try:
        completed = subprocess.run(
            argv,
            # No stdin unless given: a child never waits on the caller's terminal or pipe.
            **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError as exc:
        raise E2EError(f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise E2EError(redact(f"{_describe(argv)}: no result within {timeout:.0f} s")) from exc
    result = Result(completed.returncode, completed.stdout, completed.stderr)
    if check and result.returncode != 0:
        raise E2EError(
            redact(f"{_describe(argv)} failed (exit {result.returncode}):\n{_tail(result.stderr)}")
        )
    return result


def wait_until(
    what: str,
    probe: Callable[[], _T | None],
    *,
    timeout: float,
    interval: float = 2.0,
) -> _T:
    """Call ``probe`` until it returns something truthy; :class:`E2EError` after ``timeout``.

    An :class:`E2EError` from the probe counts as "not yet" (its message is reported if the
    wait runs out); any other exception ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = probe()
        except E2EError as exc:
            value, last_error = None, str(exc)
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error}" if last_error else ""
            raise E2EError(redact(f"timed out after {timeout:.0f} s waiting for {what}{detail}"))
        time.sleep(interval)


# -- prerequisites ---------------------------------------------------------------------------


def missing_prerequisites(*, docker_timeout: float = 30.0) -> list[str]:
    """What this machine lacks for the kind test, one entry per missing piece (empty: none)."""
    missing: list[str] = []
    docker = shutil.which("docker")
    if docker is None:
        missing.append("docker: the Docker CLI is not on PATH")
    else:
        try:
            info = subprocess.run(
                [docker, "info", "--format", "{{.ServerVersion}}"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=docker_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            missing.append(f"a Docker engine: `docker info` gave no answer in {docker_timeout} s")
        else:
            if info.returncode != 0 or not info.stdout.strip():
                lines = (info.stderr or info.stdout).strip().splitlines()
                reason = lines[-1] if lines else f"exit {info.returncode}"
                missing.append(f"a Docker engine: `docker info` failed ({reason})")
    for tool, hint in (
        ("kind", "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"),
        ("kubectl", "https://kubernetes.io/docs/tasks/tools/"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool}: not on PATH (install: {hint})")
    return missing


def skip_message(missing: Sequence[str]) -> str:
    return (
        "kind end-to-end test skipped: it needs a Docker engine, kind and kubectl; missing: "
        + "; ".join(missing)
    )


# -- the image -------------------------------------------------------------------------------


def build_image(tag: str, *, extras: str = "", timeout: float = 900.0) -> None:
    """``docker build`` the sidecar image from the repository's Dockerfile (BuildKit);
    ``extras`` is the Dockerfile's ``EXTRAS`` (``kubernetes`` for the variant that can emit
    Events)."""
    from sidecar import __version__  # noqa: PLC0415  # only when an image is built

    revision = run(["git", "rev-parse", "HEAD"], timeout=10, check=False, cwd=ROOT).stdout
    run(
        [
            "docker",
            "build",
            "--tag",
            tag,
            "--build-arg",
            f"VERSION={__version__}",
            "--build-arg",
            f"REVISION={revision.strip() or 'unknown'}",
            "--build-arg",
            f"EXTRAS={extras}",
            str(ROOT),
        ],
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )


def remove_image(tag: str, *, timeout: float = 120.0) -> None:
    """Remove the tag this test built (and only it); failures are ignored."""
    run(["docker", "image", "rm", tag], timeout=timeout, check=False)


# -- the cluster -----------------------------------------------------------------------------

_CLUSTER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,48}[a-z0-9]$")


@dataclass
class KindCluster:
    """One kind cluster this test creates, under a name nobody else uses, and deletes."""

    name: str
    kubeconfig: Path
    node_image: str | None = None
    created: bool = False

    @staticmethod
    def new_name(prefix: str = "token-sidecar-e2e") -> str:
        return f"{prefix}-{secrets.token_hex(4)}"

    def __post_init__(self) -> None:
        if not _CLUSTER_NAME.fullmatch(self.name):
            raise ValueError(f"not a usable kind cluster name: {self.name!r}")

    def existing_clusters(self) -> list[str]:
        return run(["kind", "get", "clusters"], timeout=60).stdout.split()

    def create(self, *, wait: str = "180s", timeout: float = 600.0) -> None:
        if self.name in self.existing_clusters():
            raise E2EError(f"a kind cluster named {self.name} exists already; not touching it")
        command = [
            "kind",
            "create",
            "cluster",
            "--name",
            self.name,
            "--kubeconfig",
            str(self.kubeconfig),
            "--wait",
            wait,
        ]
        if self.node_image:
            command += ["--image", self.node_image]
        # From here on the cluster is ours to delete, even if creation fails half-way.
        self.created = True
        run(command, timeout=timeout)

    def delete(self, *, timeout: float = 300.0) -> None:
        """Delete this cluster, by its name; nothing else. Idempotent."""
        if not self.created:
            return
        run(
            [
                "kind",
                "delete",
                "cluster",
                "--name",
                self.name,
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            timeout=timeout,
        )
        self.created = False

    def load_image(self, image: str, *, timeout: float = 300.0) -> None:
        run(["kind", "load", "docker-image", image, "--name", self.name], timeout=timeout)

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(self.kubeconfig, f"kind-{self.name}")


@dataclass(frozen=True)
class Kubectl:
    """``kubectl`` for one cluster: its kubeconfig file and context on every call."""

    kubeconfig: Path
    context: str

    @property
    def flags(self) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig), "--context", self.context]

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> Result:
        return run(["kubectl", *self.flags, *args], stdin=stdin, timeout=timeout, check=check)

    def json(self, *args: str, timeout: float = 60.0) -> Any:
        return json.loads(self(*args, "--output", "json", timeout=timeout).stdout)

    def apply(
        self,
        objects: Iterable[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        """``kubectl apply`` objects through stdin (Secrets never touch the disk)."""
        text = yaml.safe_dump_all([dict(obj) for obj in objects], sort_keys=False)
        args = ["apply", "--filename", "-"]
        if namespace:
            args += ["--namespace", namespace]
        self(*args, stdin=text, timeout=timeout)

    def exec(
        self,
        namespace: str,
        target: str,
        container: str,
        command: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> Result:
        args = ["exec", "--namespace", namespace, "--container", container]
        if stdin is not None:
            args.append("--stdin")
        return self(*args, target, "--", *command, stdin=stdin, timeout=timeout, check=check)

    def rollout_status(self, namespace: str, resource: str, *, timeout: float) -> None:
        self(
            "rollout",
            "status",
            "--namespace",
            namespace,
            resource,
            f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )

    def server_version(self) -> tuple[int, int]:
        """``(major, minor)`` of the API server (``"32+"`` style minors are handled)."""
        version = self.json("version")["serverVersion"]
        major = int(re.sub(r"\D", "", version["major"]))
        minor = int(re.sub(r"\D", "", version["minor"]))
        return major, minor
