"""The chart in a real cluster: kind, the image built from this repository, OpenBao and the test
authorization server in the cluster, the app container reading a valid token (``make e2e``).

What it proves, step by step:

1. the image builds from the Dockerfile and runs as the chart configures it (read-only root,
   non-root, restricted Pod Security enforced on the namespace);
2. the sidecar logs in to OpenBao with the pod's projected service-account token through
   OpenBao's Kubernetes auth, configured for the cluster's API (TokenReview), with a role bound
   to the chart's service account and the policy of ``manifests/vault/policy.hcl``;
3. it reads the refresh token seeded in KV v2, exchanges it at the in-cluster token endpoint,
   and publishes the access token in the shared in-memory volume;
4. native sidecar ordering: the app container started only after the sidecar's startup probe
   on /readyz had passed (pod status: sidecar started <= Initialized <= app started), and the
   app's first instruction found the token file;
5. the app container reads ``token.json`` (not expired, accepted by the authorization server's
   userinfo endpoint) and ``access_token``, with mode 0440 and the pod's fsGroup, and cannot
   write to the volume;
6. rotation: the rotated refresh token lands in Vault, twice, with no refresh token presented
   twice (the server's reuse counter stays at 0), and the app sees the new access token;
7. Kubernetes Events (the image built with ``EXTRAS=kubernetes``, ``events.enabled`` in the
   chart, its Role and the API token mounted in the sidecar alone): with the grant revoked at
   the authorization server, a ``Warning`` ``RefreshTokenRejected`` Event is recorded on the pod
   and ``kubectl describe pod`` shows it; after the refresh token is re-seeded in Vault as the
   runbook says (``kv patch ... refresh_token=-``), a ``Normal`` ``TokenRecovered`` Event
   follows and the app reads a fresh token again;
8. ``token-sidecar check`` passes inside the pod and ``helm test`` (or the chart's test Pod,
   without a helm binary) reaches /readyz through the Service;
9. the injector (the release's ``injector.enabled``): an annotated Deployment in an opted-in
   namespace enforcing "restricted" gets the sidecar as a native sidecar, logs in with its own
   service account and role, and its app reads a valid token from its own grant; a pod with a
   bad annotation is refused naming the annotation (``tests/e2e/injection.py``).

Skips, naming what is missing, without a Docker engine, kind or kubectl. Environment knobs:
``TOKEN_SIDECAR_E2E_NODE_IMAGE`` (kind node image, Kubernetes >= 1.29),
``TOKEN_SIDECAR_E2E_INSTALLER`` (``helm`` or ``sdk``; default helm when on PATH, else the chart
rendered with helm-python-sdk and applied with kubectl), ``TOKEN_SIDECAR_E2E_KEEP_CLUSTER=1``
(keep the cluster for debugging; the test prints how to delete it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import injection, stack
from tests.e2e.kind import (
    E2EError,
    KindCluster,
    Kubectl,
    build_image,
    missing_prerequisites,
    redact,
    register_secret,
    remove_image,
    skip_message,
    wait_until,
)

pytestmark = pytest.mark.e2e

NODE_IMAGE_ENV = "TOKEN_SIDECAR_E2E_NODE_IMAGE"
INSTALLER_ENV = "TOKEN_SIDECAR_E2E_INSTALLER"
KEEP_ENV = "TOKEN_SIDECAR_E2E_KEEP_CLUSTER"
MIN_KUBERNETES = (1, 29)  # native sidecars


@pytest.fixture(scope="module")
def cluster() -> Iterator[KindCluster]:
    """A kind cluster of this test's own, deleted afterwards (by the name chosen here)."""
    missing = missing_prerequisites()
    if missing:
        pytest.skip(skip_message(missing))
    workdir = Path(tempfile.mkdtemp(prefix="token-sidecar-e2e-"))
    kind_cluster = KindCluster(
        name=KindCluster.new_name(),
        kubeconfig=workdir / "kubeconfig",
        node_image=os.environ.get(NODE_IMAGE_ENV) or None,
    )
    keep = os.environ.get(KEEP_ENV) == "1"
    try:
        kind_cluster.create()
        yield kind_cluster
    finally:
        if keep and kind_cluster.created:
            print(  # shown with -s or on failure: how to reach and remove it
                f"\nkept kind cluster {kind_cluster.name}; kubeconfig {kind_cluster.kubeconfig}\n"
                f"delete it with: kind delete cluster --name {kind_cluster.name}"
            )
        else:
            try:
                kind_cluster.delete()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def image_tag(cluster: KindCluster) -> Iterator[str]:
    """The sidecar image built from this checkout and loaded into the cluster's nodes."""
    tag = f"e2e-{secrets.token_hex(4)}"
    image = f"{stack.SIDECAR_REPOSITORY}:{tag}"
    try:
        build_image(image, extras="kubernetes")
        cluster.load_image(image)
        yield tag
    finally:
        remove_image(image)


def _installer() -> str:
    choice = os.environ.get(INSTALLER_ENV) or ("helm" if shutil.which("helm") else "sdk")
    if choice not in ("helm", "sdk"):
        raise ValueError(f"{INSTALLER_ENV} must be helm or sdk, not {choice!r}")
    return choice


@contextlib.contextmanager
def diagnostics_on_failure(kubectl: Kubectl) -> Iterator[None]:
    """On failure, print what a person debugging it would look at first (secrets redacted)."""
    try:
        yield
    except BaseException:
        commands = [
            ("get", "pods", "--all-namespaces", "--output", "wide"),
            ("get", "events", "--all-namespaces", "--sort-by=.lastTimestamp"),
            ("describe", "pods", "--namespace", stack.APP_NAMESPACE),
            ("describe", "pods", "--namespace", stack.INFRA_NAMESPACE),
            ("describe", "pods", "--namespace", injection.NAMESPACE),
            ("describe", "replicasets", "--namespace", injection.NAMESPACE),
            (
                "logs",
                "--namespace",
                stack.APP_NAMESPACE,
                f"deployment/{injection.INJECTOR_DEPLOYMENT}",
                "--tail=100",
            ),
            (
                "logs",
                "--namespace",
                injection.NAMESPACE,
                f"deployment/{injection.DEPLOYMENT}",
                "--all-containers",
                "--prefix",
                "--tail=200",
            ),
            (
                "logs",
                "--namespace",
                stack.APP_NAMESPACE,
                f"deployment/{stack.FULLNAME}",
                "--all-containers",
                "--prefix",
                "--tail=200",
            ),
            ("logs", "--namespace", stack.INFRA_NAMESPACE, "deployment/openbao", "--tail=100"),
            (
                "logs",
                "--namespace",
                stack.INFRA_NAMESPACE,
                "deployment/idp",
                "--all-containers",
                "--prefix",
                "--tail=100",
            ),
        ]
        for args in commands:
            try:
                result = kubectl(*args, timeout=30, check=False)
                text = result.stdout + result.stderr
            except E2EError as exc:
                text = str(exc)
            print(f"\n===== kubectl {' '.join(args)}\n{redact(text)[-20000:]}")
        raise


def _read_app_file(
    kubectl: Kubectl, pod: str, name: str, namespace: str = stack.APP_NAMESPACE
) -> str:
    return kubectl.exec(
        namespace, pod, stack.APP_CONTAINER, ["cat", f"{stack.TOKEN_DIR}/{name}"]
    ).stdout


def _read_token(
    kubectl: Kubectl, pod: str, namespace: str = stack.APP_NAMESPACE
) -> dict[str, object]:
    """token.json as the app reads it, and access_token agreeing with it (the sidecar writes
    token.json first, so a refresh between the two reads is retried)."""

    def consistent() -> dict[str, object] | None:
        token = json.loads(_read_app_file(kubectl, pod, "token.json", namespace))
        register_secret(str(token.get("access_token", "")))
        alone = _read_app_file(kubectl, pod, "access_token", namespace)
        return token if alone == token.get("access_token") else None

    return wait_until("token.json and access_token to agree", consistent, timeout=30, interval=1)


def _start_infra(kubectl: Kubectl) -> tuple[stack.Vault, stack.Idp, stack.Grant, int]:
    """OpenBao and the IdP running and configured, the refresh token seeded in KV.

    Returns the Vault and IdP drivers, the seeded grant and the secret's version.
    """
    stack_secrets = stack.StackSecrets.generate()
    objects = stack.manifest_objects()
    kubectl.apply([obj for obj in objects if obj["kind"] == "Namespace"])
    kubectl.apply([*stack.secret_objects(stack_secrets), stack.idp_source_config_map()])
    kubectl.apply([obj for obj in objects if obj["kind"] != "Namespace"])
    kubectl.rollout_status(stack.INFRA_NAMESPACE, "deployment/openbao", timeout=240)
    # Pulls node:22-alpine and runs npm ci: the slowest step.
    kubectl.rollout_status(stack.INFRA_NAMESPACE, "deployment/idp", timeout=420)

    vault = stack.Vault(stack.in_cluster_bao(kubectl))
    vault.configure()
    idp = stack.Idp(stack.in_cluster_idp(kubectl))
    seeded = idp.seed()
    version = vault.put(
        {
            "refresh_token": seeded.refresh_token,
            "client_id": stack.CLIENT_ID,
            "client_secret": stack_secrets.client_secret,
        }
    )
    return vault, idp, seeded, version


def _install_chart(kubectl: Kubectl, installer: str, values: dict[str, object]) -> str:
    """Install the release and return the name of its pod once Ready."""
    if installer == "helm":
        with tempfile.TemporaryDirectory(prefix="token-sidecar-e2e-values-") as tmp:
            values_file = Path(tmp) / "values.yaml"
            values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
            stack.install_with_helm(kubectl, values_file, timeout=300)
    else:
        stack.install_with_sdk(kubectl, values, timeout=300)
    pod_name = str(stack.app_pod(kubectl)["metadata"]["name"])
    kubectl(
        "wait",
        "--namespace",
        stack.APP_NAMESPACE,
        "--for=condition=Ready",
        f"pod/{pod_name}",
        "--timeout=120s",
        timeout=150,
    )
    return pod_name


def _assert_app_started_after_first_token(kubectl: Kubectl, pod_name: str) -> None:
    problems, times = stack.native_order_problems(stack.app_pod(kubectl))
    assert not problems, problems
    assert times is not None
    print(  # the evidence, in the output of -rP or -s
        f"sidecar started {times.sidecar_started.isoformat()}, pod Initialized "
        f"{times.pod_initialized.isoformat()}, app started {times.app_started.isoformat()}"
    )
    logs = kubectl(
        "logs",
        "--namespace",
        stack.APP_NAMESPACE,
        pod_name,
        "--container",
        stack.APP_CONTAINER,
        "--limit-bytes=4096",
    ).stdout
    assert logs.splitlines()[:1] == [stack.APP_TOKEN_PRESENT], logs[:200]


def _assert_app_reads_a_valid_token(
    kubectl: Kubectl, idp: stack.Idp, pod_name: str
) -> dict[str, object]:
    token = _read_token(kubectl, pod_name)
    problems = stack.token_problems(token, now=datetime.now(UTC))
    assert not problems, problems
    # Accepted by the authorization server: its userinfo endpoint knows the subject.
    status, userinfo = idp.userinfo(str(token["access_token"]))
    assert (status, userinfo) == (200, {"sub": stack.ACCOUNT}), (status, userinfo)
    files = [f"{stack.TOKEN_DIR}/token.json", f"{stack.TOKEN_DIR}/access_token"]
    modes = kubectl.exec(
        stack.APP_NAMESPACE, pod_name, stack.APP_CONTAINER, ["stat", "-c", "%a %g", *files]
    ).stdout.split()
    assert modes == ["440", str(stack.FS_GROUP)] * 2, modes
    write = kubectl.exec(
        stack.APP_NAMESPACE,
        pod_name,
        stack.APP_CONTAINER,
        ["sh", "-c", f"echo x > {stack.TOKEN_DIR}/written-by-app"],
        check=False,
    )
    assert write.returncode != 0, "the app container could write to the token volume"
    return token


def _assert_rotations_land_in_vault(
    kubectl: Kubectl,
    vault: stack.Vault,
    idp: stack.Idp,
    pod_name: str,
    *,
    seeded: str,
    seeded_version: int,
    first_token: dict[str, object],
) -> None:
    data, version = vault.read()
    first_rotated = register_secret(str(data["refresh_token"]))
    assert first_rotated != seeded, "Vault still holds the seeded refresh token"
    assert version > seeded_version
    assert data["client_id"] == stack.CLIENT_ID  # the sidecar kept the other fields
    exchanges = idp.stats()["refresh_succeeded"]
    assert exchanges >= 1

    # 30 s access tokens: the sidecar refreshes, and the server rotates, about every 15 s.
    def rotated_again() -> str | None:
        current, _ = vault.read()
        value = str(current["refresh_token"])
        return register_secret(value) if value not in (seeded, first_rotated) else None

    wait_until("a second rotation to land in Vault", rotated_again, timeout=120, interval=3)
    stats = idp.stats()
    assert stats["refresh_succeeded"] > exchanges, stats
    # No refresh token was ever presented twice, and none was refused.
    assert stats["refresh_token_reuse"] == 0, stats
    assert stats["refresh_invalid_grant"] == 0, stats

    def new_access_token() -> dict[str, object] | None:
        latest = _read_token(kubectl, pod_name)
        return latest if latest["access_token"] != first_token["access_token"] else None

    latest = wait_until("the app to see a new access token", new_access_token, timeout=60)
    problems = stack.token_problems(latest, now=datetime.now(UTC))
    assert not problems, problems


def _node(kubectl: Kubectl) -> str:
    return str(stack.app_pod(kubectl)["spec"]["nodeName"])


def _assert_events_on_rejection_and_recovery(
    kubectl: Kubectl, vault: stack.Vault, idp: stack.Idp, pod_name: str, grant: stack.Grant
) -> None:
    idp.revoke(grant.grant_id)  # the next refresh is answered invalid_grant

    def recorded(reason: str) -> list[dict[str, Any]] | None:
        return stack.pod_events(kubectl, pod_name, reason) or None

    rejected = wait_until(
        "a RefreshTokenRejected Event on the pod",
        lambda: recorded("RefreshTokenRejected"),
        timeout=120,
        interval=3,
    )
    assert rejected[0]["type"] == "Warning", rejected
    assert stack.CREDENTIAL in str(rejected[0]["message"]), rejected
    assert rejected[0]["source"] == {"component": "token-sidecar", "host": _node(kubectl)}, rejected
    assert rejected[0]["involvedObject"]["uid"] == stack.app_pod(kubectl)["metadata"]["uid"]
    described = kubectl("describe", "pod", "--namespace", stack.APP_NAMESPACE, pod_name).stdout
    assert "RefreshTokenRejected" in described, redact(described)[-3000:]

    # The runbook's fix: a new refresh token patched into the secret.
    before = _read_token(kubectl, pod_name)
    vault.reseed(idp.seed().refresh_token)
    recovered = wait_until(
        "a TokenRecovered Event on the pod",
        lambda: recorded("TokenRecovered"),
        timeout=60,
        interval=3,
    )
    assert recovered[0]["type"] == "Normal", recovered

    def fresh_token() -> dict[str, object] | None:
        latest = _read_token(kubectl, pod_name)
        return latest if latest["access_token"] != before["access_token"] else None

    latest = wait_until("the app to read a token from the re-seeded grant", fresh_token, timeout=60)
    problems = stack.token_problems(latest, now=datetime.now(UTC))
    assert not problems, problems


def _assert_injector_adds_the_sidecar(kubectl: Kubectl, vault: stack.Vault, idp: stack.Idp) -> None:
    kubectl.rollout_status(
        stack.APP_NAMESPACE, f"deployment/{injection.INJECTOR_DEPLOYMENT}", timeout=180
    )
    vault.grant(
        injection.VAULT_ROLE, injection.SERVICE_ACCOUNT, injection.NAMESPACE, injection.KV_PATH
    )
    shared, _ = vault.read()  # the client's credentials, as the operator seeded them
    vault.put(
        {
            "refresh_token": idp.seed().refresh_token,
            "client_id": str(shared["client_id"]),
            "client_secret": register_secret(str(shared["client_secret"])),
        },
        kv_path=injection.KV_PATH,
    )
    kubectl.apply(injection.objects())
    kubectl.rollout_status(injection.NAMESPACE, f"deployment/{injection.DEPLOYMENT}", timeout=300)
    pod = injection.app_pod(kubectl)
    assert injection.injection_problems(pod) == []
    problems, _ = stack.native_order_problems(pod)
    assert not problems, problems
    name = str(pod["metadata"]["name"])
    logs = kubectl(
        "logs", "--namespace", injection.NAMESPACE, name, "--container", stack.APP_CONTAINER
    ).stdout
    assert logs.splitlines()[:1] == [stack.APP_TOKEN_PRESENT], logs[:200]
    token = _read_token(kubectl, name, injection.NAMESPACE)
    problems = stack.token_problems(token, now=datetime.now(UTC))
    assert not problems, problems
    status, userinfo = idp.userinfo(str(token["access_token"]))
    assert (status, userinfo) == (200, {"sub": stack.ACCOUNT}), (status, userinfo)

    refused = kubectl(
        "apply",
        "--filename",
        "-",
        stdin=yaml.safe_dump(injection.denied_pod()),
        check=False,
    )
    assert refused.returncode != 0, "a pod with a bad annotation was admitted"
    assert injection.BAD_ANNOTATION in refused.stderr, redact(refused.stderr)[-2000:]


def test_chart_in_kind(cluster: KindCluster, image_tag: str) -> None:
    kubectl = cluster.kubectl
    installer = _installer()
    with diagnostics_on_failure(kubectl):
        version = kubectl.server_version()
        assert version >= MIN_KUBERNETES, (
            f"kind made a Kubernetes {version[0]}.{version[1]} cluster; native sidecars need "
            f">= 1.29: set {NODE_IMAGE_ENV} to a newer kindest/node image"
        )
        vault, idp, grant, seeded_version = _start_infra(kubectl)

        values = {**stack.chart_values(image_tag), **injection.injector_values()}
        pod_name = _install_chart(kubectl, installer, values)

        _assert_app_started_after_first_token(kubectl, pod_name)
        token = _assert_app_reads_a_valid_token(kubectl, idp, pod_name)
        check = kubectl.exec(
            stack.APP_NAMESPACE,
            pod_name,
            stack.SIDECAR_CONTAINER,
            ["token-sidecar", "check"],
            timeout=90,
            check=False,
        )
        assert check.returncode == 0, redact(check.stdout + check.stderr)[-3000:]

        _assert_rotations_land_in_vault(
            kubectl,
            vault,
            idp,
            pod_name,
            seeded=grant.refresh_token,
            seeded_version=seeded_version,
            first_token=token,
        )
        _assert_injector_adds_the_sidecar(kubectl, vault, idp)
        _assert_events_on_rejection_and_recovery(kubectl, vault, idp, pod_name, grant)

        # The chart's own test (/readyz through the Service), and nothing restarted meanwhile.
        if installer == "helm":
            stack.helm_test(kubectl, timeout=180)
        else:
            stack.sdk_test(kubectl, values, timeout=180)
        problems, _ = stack.native_order_problems(stack.app_pod(kubectl))
        assert not problems, problems
