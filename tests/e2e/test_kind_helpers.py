"""The kind test's helpers, checked without Docker or kind: stand-in ``docker``, ``kind`` and
``kubectl`` programs on PATH record how they are called. Also the pure checks the test applies
to a pod's status and to the token file."""

from __future__ import annotations

import json
import os
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import stack
from tests.e2e.kind import (
    E2EError,
    KindCluster,
    Kubectl,
    build_image,
    missing_prerequisites,
    register_secret,
    run,
    skip_message,
    wait_until,
)

RECORDER = """#!{python}
import json, os, sys
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv, "stdin": stdin}}) + "\\n")
{body}
"""


def _tool(bin_dir: Path, name: str, body: str = "") -> None:
    path = bin_dir / name
    path.write_text(RECORDER.format(python=sys.executable, body=body), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return directory


def _calls(bin_dir: Path) -> list[dict[str, Any]]:
    log = bin_dir.parent / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


# -- prerequisites ---------------------------------------------------------------------------


def test_each_missing_tool_is_named(bin_dir: Path) -> None:
    missing = missing_prerequisites()
    assert [entry.split(":")[0] for entry in missing] == ["docker", "kind", "kubectl"]
    message = skip_message(missing)
    assert message.startswith("kind end-to-end test skipped: it needs a Docker engine, kind")
    for tool in ("docker", "kind", "kubectl"):
        assert f"{tool}: not on PATH" in message or f"{tool}: the Docker CLI" in message


def test_a_docker_cli_without_engine_is_reported(bin_dir: Path) -> None:
    _tool(
        bin_dir,
        "docker",
        'sys.stderr.write("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.'
        ' Is the docker daemon running?\\n"); sys.exit(1)',
    )
    _tool(bin_dir, "kind")
    _tool(bin_dir, "kubectl")
    assert missing_prerequisites() == [
        "a Docker engine: `docker info` failed (Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running?)"
    ]


def test_nothing_missing(bin_dir: Path) -> None:
    _tool(bin_dir, "docker", 'print("27.3.1")')
    _tool(bin_dir, "kind")
    _tool(bin_dir, "kubectl")
    assert missing_prerequisites() == []
    assert _calls(bin_dir)[0]["argv"][1:] == ["info", "--format", "{{.ServerVersion}}"]


# -- the cluster: created and deleted by its own name ------------------------------------------


def test_cluster_is_created_and_deleted_by_its_name(bin_dir: Path, tmp_path: Path) -> None:
    _tool(bin_dir, "kind", 'print("someone-elses-cluster")' + "\n")
    name = KindCluster.new_name()
    assert name.startswith("token-sidecar-e2e-")
    assert KindCluster.new_name() != name
    cluster = KindCluster(name=name, kubeconfig=tmp_path / "kubeconfig")
    cluster.delete()  # nothing created yet: nothing to delete
    assert _calls(bin_dir) == []
    cluster.create()
    cluster.delete()
    cluster.delete()
    argvs = [call["argv"][1:] for call in _calls(bin_dir)]
    kubeconfig = str(tmp_path / "kubeconfig")
    assert argvs == [
        ["get", "clusters"],
        ["create", "cluster", "--name", name, "--kubeconfig", kubeconfig, "--wait", "180s"],
        ["delete", "cluster", "--name", name, "--kubeconfig", kubeconfig],
    ]


def test_an_existing_cluster_of_that_name_is_never_touched(bin_dir: Path, tmp_path: Path) -> None:
    _tool(bin_dir, "kind", 'print("token-sidecar-e2e-0000aaaa")')
    cluster = KindCluster(name="token-sidecar-e2e-0000aaaa", kubeconfig=tmp_path / "k")
    with pytest.raises(E2EError, match="exists already"):
        cluster.create()
    cluster.delete()
    assert [call["argv"][1:] for call in _calls(bin_dir)] == [["get", "clusters"]]


def test_a_failed_create_still_deletes_what_it_began(bin_dir: Path, tmp_path: Path) -> None:
    _tool(bin_dir, "kind", 'sys.exit(1 if sys.argv[1] == "create" else 0)')
    cluster = KindCluster(name="token-sidecar-e2e-0000bbbb", kubeconfig=tmp_path / "k")
    with pytest.raises(E2EError, match="failed"):
        cluster.create()
    cluster.delete()
    assert _calls(bin_dir)[-1]["argv"][1:4] == ["delete", "cluster", "--name"]


def test_cluster_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind cluster name"):
        KindCluster(name="Bad Name", kubeconfig=tmp_path / "k")


# -- kubectl ---------------------------------------------------------------------------------


def test_kubectl_always_names_the_cluster(bin_dir: Path, tmp_path: Path) -> None:
    _tool(bin_dir, "kubectl", 'print(json.dumps({"items": []}))')
    kubectl = Kubectl(tmp_path / "kubeconfig", "kind-token-sidecar-e2e-1234abcd")
    kubectl.exec("ns", "deploy/x", "c", ["bao", "kv", "put", "-"], stdin='{"a": "b"}')
    kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}])
    assert kubectl.json("get", "pods") == {"items": []}
    calls = _calls(bin_dir)
    flags = ["--kubeconfig", str(tmp_path / "kubeconfig"), "--context", kubectl.context]
    assert all(call["argv"][1:5] == flags for call in calls)
    assert calls[0]["argv"][5:] == [
        "exec",
        "--namespace",
        "ns",
        "--container",
        "c",
        "--stdin",
        "deploy/x",
        "--",
        "bao",
        "kv",
        "put",
        "-",
    ]
    assert calls[0]["stdin"] == '{"a": "b"}'
    assert calls[1]["argv"][5:] == ["apply", "--filename", "-"]
    assert yaml.safe_load(calls[1]["stdin"])["kind"] == "Namespace"
    assert calls[2]["argv"][5:] == ["get", "pods", "--output", "json"]


def test_pod_events_asks_for_one_reason_on_one_pod(bin_dir: Path, tmp_path: Path) -> None:
    event = {"reason": "RefreshTokenRejected", "type": "Warning", "message": "m"}
    answer = json.dumps({"items": [event]})
    _tool(bin_dir, "kubectl", f"print({json.dumps(answer)})")
    kubectl = Kubectl(tmp_path / "kubeconfig", "kind-x")
    assert stack.pod_events(kubectl, "app-123", "RefreshTokenRejected") == [event]
    assert _calls(bin_dir)[0]["argv"][5:] == [
        "get",
        "events",
        "--namespace",
        stack.APP_NAMESPACE,
        "--field-selector",
        "involvedObject.kind=Pod,involvedObject.name=app-123,reason=RefreshTokenRejected",
        "--output",
        "json",
    ]


def test_the_image_is_built_with_the_extras_asked_for(bin_dir: Path) -> None:
    _tool(bin_dir, "docker")
    _tool(bin_dir, "git", 'print("0123abcd")')
    build_image("token-sidecar:e2e-1", extras="kubernetes")
    argv = _calls(bin_dir)[-1]["argv"]
    assert argv[1:4] == ["build", "--tag", "token-sidecar:e2e-1"]
    build_args = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--build-arg"]
    assert "EXTRAS=kubernetes" in build_args
    assert "REVISION=0123abcd" in build_args


def test_server_version(bin_dir: Path, tmp_path: Path) -> None:
    answer = {"serverVersion": {"major": "1", "minor": "32+"}}
    _tool(bin_dir, "kubectl", f"print({json.dumps(json.dumps(answer))})")
    assert Kubectl(tmp_path / "k", "kind-x").server_version() == (1, 32)


# -- run and wait ----------------------------------------------------------------------------


def test_run_is_bounded() -> None:
    with pytest.raises(E2EError, match="no result within"):
        run([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.5)


def test_errors_carry_stderr_with_secrets_hidden() -> None:
    secret = register_secret("e2e-secret-" + os.urandom(8).hex())
    script = f"import sys; print({secret!r}); sys.stderr.write('bad ' + {secret!r}); sys.exit(3)"
    with pytest.raises(E2EError) as caught:
        run([sys.executable, "-c", script], timeout=10)
    assert "exit 3" in str(caught.value)
    assert "bad ***" in str(caught.value)
    assert secret not in str(caught.value)


def test_wait_until_reports_the_last_error() -> None:
    def probe() -> None:
        raise E2EError("not there yet")

    with pytest.raises(E2EError, match=r"waiting for the thing; last error: not there yet"):
        wait_until("the thing", probe, timeout=0.2, interval=0.05)
    assert wait_until("a value", lambda: "ok", timeout=1) == "ok"


# -- the checks on the pod and the token file ------------------------------------------------

T0 = datetime(2026, 11, 22, 14, 0, 0, tzinfo=UTC)


def _ts(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(
    *, sidecar_at: int = 0, initialized_at: int = 3, app_at: int = 4, started: bool = True
) -> dict[str, Any]:
    spec = stack.render_release(stack.chart_values("e2e-test"))
    (deployment,) = [o for o in spec if o["kind"] == "Deployment"]
    return {
        "spec": deployment["spec"]["template"]["spec"],
        "status": {
            "conditions": [
                {
                    "type": "Initialized",
                    "status": "True",
                    "lastTransitionTime": _ts(initialized_at),
                },
                {"type": "Ready", "status": "True", "lastTransitionTime": _ts(app_at + 1)},
            ],
            "initContainerStatuses": [
                {
                    "name": stack.SIDECAR_CONTAINER,
                    "started": started,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": _ts(sidecar_at)}},
                }
            ],
            "containerStatuses": [
                {
                    "name": stack.APP_CONTAINER,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": _ts(app_at)}},
                }
            ],
        },
    }


def test_native_order_holds() -> None:
    problems, times = stack.native_order_problems(_pod())
    assert problems == []
    assert times is not None
    assert times.app_started - times.sidecar_started == timedelta(seconds=4)


def test_native_order_same_second_is_accepted() -> None:
    assert stack.native_order_problems(_pod(initialized_at=2, app_at=2))[0] == []


def test_app_started_before_the_sidecar_was_started_is_caught() -> None:
    problems, _ = stack.native_order_problems(_pod(initialized_at=5, app_at=2))
    assert len(problems) == 1
    assert problems[0].startswith("start order")


def test_sidecar_not_started_is_caught() -> None:
    problems, _ = stack.native_order_problems(_pod(started=False))
    assert problems == [
        f"{stack.SIDECAR_CONTAINER} is not marked started (startup probe not passed)"
    ]


def test_classic_sidecar_is_caught() -> None:
    pod = _pod()
    sidecar = pod["spec"].pop("initContainers")[0]
    pod["spec"]["containers"].append(sidecar)
    problems, _ = stack.native_order_problems(pod)
    assert "is not an init container" in problems[0]


def test_restarts_are_caught() -> None:
    pod = _pod()
    pod["status"]["containerStatuses"][0]["restartCount"] = 2
    problems, _ = stack.native_order_problems(pod)
    assert problems == [f"{stack.APP_CONTAINER} restarted 2 times"]


def _token(issued: int, expires: int, token_type: str = "Bearer") -> dict[str, Any]:
    return {
        "access_token": "at",
        "token_type": token_type,
        "issued_at": _ts(issued),
        "expires_at": _ts(expires),
    }


def test_token_checks() -> None:
    now = T0 + timedelta(seconds=10)
    assert stack.token_problems(_token(0, 30), now=now) == []
    assert stack.token_problems(_token(0, 5), now=now)[0].startswith("expired")
    assert "token_type" in stack.token_problems(_token(0, 30, "mac"), now=now)[0]
    assert (
        "unreadable"
        in stack.token_problems({"access_token": "at", "token_type": "Bearer"}, now=now)[0]
    )
