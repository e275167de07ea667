"""What the kind end-to-end test puts in the cluster, and how it checks the result.

In-cluster pieces (names are fixed: every run has a cluster of its own):

- namespace ``e2e-infra``: OpenBao in dev mode (``manifests/openbao.yaml``) and the test
  authorization server (``manifests/idp.yaml``: ``node:22-alpine`` running
  ``tests/support/idp/server.mjs`` after ``npm ci`` in an init container, the files mounted from
  a ConfigMap this module builds, and ``idp_forward.mjs`` exposing it on the pod's IP);
- namespace ``e2e-app`` (Pod Security "restricted" enforced): the chart's release, its pod
  running the app (busybox) and the sidecar built from this repository.

OpenBao is driven with its own CLI inside its pod and the authorization server with
``idp_call.mjs`` inside its pod (``kubectl exec``, secrets on stdin only). Both drivers are
plain callables, so ``test_stack_local.py`` runs the very same Vault set-up and IdP calls
against the local servers of the integration tests.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.kind import ROOT, E2EError, Kubectl, redact, register_secret, run, wait_until

HERE = Path(__file__).resolve().parent
MANIFESTS_DIR = HERE / "manifests"
#: Applied in this order: the namespaces first.
MANIFEST_FILES = ("namespaces.yaml", "openbao.yaml", "idp.yaml")
IDP_DIR = ROOT / "tests" / "support" / "idp"
#: The ConfigMap idp-source: key -> file.
IDP_SOURCE_FILES: Mapping[str, Path] = {
    "server.mjs": IDP_DIR / "server.mjs",
    "package.json": IDP_DIR / "package.json",
    "package-lock.json": IDP_DIR / "package-lock.json",
    "idp_forward.mjs": HERE / "idp_forward.mjs",
    "idp_call.mjs": HERE / "idp_call.mjs",
}
POLICY_FILE = ROOT / "manifests" / "vault" / "policy.hcl"
CHART_DIR = ROOT / "charts" / "token-sidecar"

INFRA_NAMESPACE = "e2e-infra"
APP_NAMESPACE = "e2e-app"
RELEASE = "e2e"
FULLNAME = "e2e-token-sidecar"  # the chart's <release>-token-sidecar
SERVICE_ACCOUNT = "e2e-app"
VAULT_ROLE = "e2e-app"
VAULT_POLICY = "e2e-app-tokens"
AUTH_MOUNT = "kubernetes"
AUDIENCE = "vault"  # the chart's serviceAccountToken.audience default
KV_MOUNT = "secret"
KV_PATH = "apps/e2e-app/billing"
CREDENTIAL = "billing"
CLIENT_ID = "client-basic"  # client_secret_basic in server.mjs
SCOPE = "openid offline_access"
ACCOUNT = "test-user"  # the subject /_test/seed uses by default
VAULT_ADDRESS = f"http://openbao.{INFRA_NAMESPACE}.svc:8200"
TOKEN_ENDPOINT = f"http://idp.{INFRA_NAMESPACE}.svc:8080/token"
KUBERNETES_HOST = "https://kubernetes.default.svc"
SIDECAR_CONTAINER = "token-sidecar"
APP_CONTAINER = "app"
TOKEN_DIR = f"/var/run/tokens/{CREDENTIAL}"
FS_GROUP = 65532  # the chart's podSecurityContext.fsGroup, given to the token files
APP_IMAGE = {"repository": "busybox", "tag": "1.36.1"}
SIDECAR_REPOSITORY = "token-sidecar"
#: The first line the app prints: whether the token existed when the app container started.
APP_TOKEN_PRESENT = "e2e: token present at app start"
APP_TOKEN_MISSING = "e2e: token missing at app start"
APP_SCRIPT = (
    f'if [ -s {TOKEN_DIR}/token.json ]; then echo "{APP_TOKEN_PRESENT}"; '
    f'else echo "{APP_TOKEN_MISSING}"; fi\n'
    "trap 'exit 0' TERM\n"
    "while true; do sleep 1; done\n"
)
HOOK_ANNOTATION = "helm.sh/hook"


# -- objects ---------------------------------------------------------------------------------


def manifest_objects() -> list[dict[str, Any]]:
    """Every object of ``manifests/*.yaml``, in apply order."""
    objects: list[dict[str, Any]] = []
    for name in MANIFEST_FILES:
        text = (MANIFESTS_DIR / name).read_text(encoding="utf-8")
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


@dataclass(frozen=True)
class StackSecrets:
    """Random per run: OpenBao's dev root token and the IdP's client secret."""

    root_token: str
    client_secret: str

    @classmethod
    def generate(cls) -> StackSecrets:
        return cls(
            root_token=register_secret("e2e-root-" + secrets.token_hex(16)),
            client_secret=register_secret(secrets.token_urlsafe(32)),
        )

    def __repr__(self) -> str:
        return "StackSecrets(***)"


def secret_objects(stack_secrets: StackSecrets) -> list[dict[str, Any]]:
    def secret(name: str, data: Mapping[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": INFRA_NAMESPACE},
            "type": "Opaque",
            "stringData": dict(data),
        }

    return [
        secret("openbao-dev", {"root-token": stack_secrets.root_token}),
        secret(
            "idp-clients",
            {"IDP_CLIENT_SECRETS": json.dumps({CLIENT_ID: stack_secrets.client_secret})},
        ),
    ]


def idp_source_config_map() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "idp-source",
            "namespace": INFRA_NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "token-sidecar-e2e"},
        },
        "data": {key: path.read_text(encoding="utf-8") for key, path in IDP_SOURCE_FILES.items()},
    }


# -- Vault (OpenBao) -------------------------------------------------------------------------

#: Runs ``bao <args>`` with optional stdin and returns its stdout.
BaoRunner = Callable[[Sequence[str], str | None], str]


def adapted_policy(kv_path: str = KV_PATH, *, text: str | None = None) -> str:
    """``manifests/vault/policy.hcl`` with its example path replaced by ``kv_path``."""
    text = POLICY_FILE.read_text(encoding="utf-8") if text is None else text
    example = "apps/my-app/billing"
    if (
        text.count(f'"secret/data/{example}"') != 1
        or text.count(f'"secret/metadata/{example}"') != 1
    ):
        raise E2EError(f"{POLICY_FILE} no longer holds the example paths for {example}")
    return text.replace(example, kv_path.strip("/"))


def in_cluster_bao(kubectl: Kubectl) -> BaoRunner:
    """``bao`` inside the OpenBao pod (BAO_ADDR and BAO_TOKEN come from its environment)."""

    def bao(args: Sequence[str], stdin: str | None) -> str:
        return kubectl.exec(
            INFRA_NAMESPACE, "deploy/openbao", "openbao", ["bao", *args], stdin=stdin
        ).stdout

    return bao


class Vault:
    """The Vault side of the test, as an operator would do it with the CLI."""

    def __init__(self, bao: BaoRunner, *, auth_mount: str = AUTH_MOUNT) -> None:
        self._bao = bao
        self.auth_mount = auth_mount

    def configure(
        self, kubernetes_config: Sequence[str] = (f"kubernetes_host={KUBERNETES_HOST}",)
    ) -> None:
        """Policy, Kubernetes auth (configured for the cluster) and the app's role."""
        self._bao(["policy", "write", VAULT_POLICY, "-"], adapted_policy())
        mounts = json.loads(self._bao(["auth", "list", "-format=json"], None))
        if f"{self.auth_mount}/" not in mounts:
            self._bao(["auth", "enable", f"-path={self.auth_mount}", "kubernetes"], None)
        self._bao(["write", f"auth/{self.auth_mount}/config", *kubernetes_config], None)
        self._role(VAULT_ROLE, SERVICE_ACCOUNT, APP_NAMESPACE, VAULT_POLICY)

    def grant(self, role: str, service_account: str, namespace: str, kv_path: str) -> str:
        """Another app's access, after :meth:`configure`: the shipped policy adapted to
        ``kv_path`` (named ``<role>-tokens``) and a role binding the service account to it.
        Returns the policy's name."""
        policy = f"{role}-tokens"
        self._bao(["policy", "write", policy, "-"], adapted_policy(kv_path))
        self._role(role, service_account, namespace, policy)
        return policy

    def _role(self, role: str, service_account: str, namespace: str, policy: str) -> None:
        self._bao(
            [
                "write",
                f"auth/{self.auth_mount}/role/{role}",
                f"bound_service_account_names={service_account}",
                f"bound_service_account_namespaces={namespace}",
                f"audience={AUDIENCE}",
                f"token_policies={policy}",
                "token_ttl=1h",
            ],
            None,
        )

    def put(self, data: Mapping[str, str], kv_path: str = KV_PATH) -> int:
        """Write the secret (fields as JSON on stdin); returns the new version."""
        answer = json.loads(
            self._bao(
                ["kv", "put", "-format=json", f"-mount={KV_MOUNT}", kv_path, "-"], json.dumps(data)
            )
        )
        return int(answer["data"]["version"])

    def reseed(self, refresh_token: str) -> int:
        """Re-seed the refresh token as the runbook says (``kv patch ... refresh_token=-``, the
        value on stdin): the other fields, and the sidecar's own, are kept. Returns the version.
        """
        answer = json.loads(
            self._bao(
                ["kv", "patch", "-format=json", f"-mount={KV_MOUNT}", KV_PATH, "refresh_token=-"],
                refresh_token,
            )
        )
        return int(answer["data"]["version"])

    def read(self, kv_path: str = KV_PATH) -> tuple[dict[str, Any], int]:
        """The secret's latest ``(data, version)``."""
        answer = json.loads(
            self._bao(["kv", "get", "-format=json", f"-mount={KV_MOUNT}", kv_path], None)
        )
        return dict(answer["data"]["data"]), int(answer["data"]["metadata"]["version"])


# -- the test authorization server -----------------------------------------------------------

#: Runs ``node idp_call.mjs`` with a JSON request on stdin and returns its stdout.
IdpCaller = Callable[[str], str]


def in_cluster_idp(kubectl: Kubectl) -> IdpCaller:
    def call(request: str) -> str:
        return kubectl.exec(
            INFRA_NAMESPACE, "deploy/idp", "idp", ["node", "/source/idp_call.mjs"], stdin=request
        ).stdout

    return call


@dataclass(frozen=True)
class Grant:
    """A grant minted by the test server: its first refresh token, and its id for revoking."""

    refresh_token: str = field(repr=False)
    grant_id: str


class Idp:
    """The authorization server's control API and userinfo endpoint."""

    def __init__(self, call: IdpCaller) -> None:
        self._call = call

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, Any]:
        request: dict[str, Any] = {"method": method, "path": path, "headers": dict(headers or {})}
        if body is not None:
            request["body"] = body
        answer = json.loads(self._call(json.dumps(request)))
        return int(answer["status"]), answer["body"]

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(method, path, body=body)
        if status != 200:
            raise E2EError(f"{method} {path} answered {status}: {redact(str(answer))[:300]}")
        return answer

    def seed(self) -> Grant:
        """Mint a grant for :data:`CLIENT_ID`: its id and first refresh token."""
        answer = self._ok("POST", "/_test/seed", {"client_id": CLIENT_ID, "scope": SCOPE})
        return Grant(register_secret(str(answer["refresh_token"])), str(answer["grant_id"]))

    def revoke(self, grant_id: str) -> None:
        """Revoke a grant as an administrator would: its refresh tokens get ``invalid_grant``."""
        self._ok("POST", "/_test/revoke", {"grant_id": grant_id})

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._ok("GET", "/_test/stats")
        return stats

    def userinfo(self, access_token: str) -> tuple[int, Any]:
        """``GET /me`` with the access token: 200 and the subject only for a live token."""
        return self.request("GET", "/me", headers={"authorization": f"Bearer {access_token}"})


# -- the chart -------------------------------------------------------------------------------


def chart_values(image_tag: str) -> dict[str, Any]:
    """Values for the release: the image just built, the in-cluster Vault and IdP."""
    return {
        "serviceAccount": {"name": SERVICE_ACCOUNT},
        "app": {
            "image": dict(APP_IMAGE),
            "command": ["sh", "-c"],
            "args": [APP_SCRIPT],
        },
        "sidecar": {
            "mode": "native",
            # Loaded into the nodes with `kind load`; never pulled.
            "image": {"repository": SIDECAR_REPOSITORY, "tag": image_tag, "pullPolicy": "Never"},
        },
        "config": {
            "vault": {
                "address": VAULT_ADDRESS,
                # Plain http inside the test cluster (OpenBao dev mode, no TLS).
                "allow_insecure_http": True,
                "auth": {"method": "kubernetes", "mount": AUTH_MOUNT, "role": VAULT_ROLE},
            },
            "credentials": [
                {
                    "name": CREDENTIAL,
                    "kv_mount": KV_MOUNT,
                    "kv_path": KV_PATH,
                    "token_endpoint": TOKEN_ENDPOINT,
                    "client_auth": "client_secret_basic",
                    "allow_insecure_http": True,
                }
            ],
            "log": {"level": "debug", "format": "json"},
            # A re-seeded refresh token is picked up within seconds, not the default 30.
            "refresh": {"secret_poll_seconds": 3},
        },
        # Kubernetes Events on the pod; the image is built with EXTRAS=kubernetes.
        "events": {"enabled": True},
    }


def pod_events(kubectl: Kubectl, pod_name: str, reason: str) -> list[dict[str, Any]]:
    """The Events recorded on the app's pod with ``reason`` (``core/v1``, as ``kubectl describe
    pod`` lists them)."""
    answer = kubectl(
        "get",
        "events",
        "--namespace",
        APP_NAMESPACE,
        "--field-selector",
        f"involvedObject.kind=Pod,involvedObject.name={pod_name},reason={reason}",
        "--output",
        "json",
        timeout=30,
    ).stdout
    items: list[dict[str, Any]] = json.loads(answer)["items"]
    return items


def is_hook(obj: Mapping[str, Any]) -> bool:
    return HOOK_ANNOTATION in (obj.get("metadata", {}).get("annotations") or {})


def render_release(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered by Helm's engine (helm-python-sdk), hooks included."""
    from tests.chart.rendering import render  # noqa: PLC0415  # loads Helm's shared library

    return render(dict(values), release=RELEASE, namespace=APP_NAMESPACE).objects


def helm(kubectl: Kubectl, *args: str, timeout: float) -> str:
    command = ["helm", "--kubeconfig", str(kubectl.kubeconfig), "--kube-context", kubectl.context]
    return run([*command, *args], timeout=timeout).stdout


def install_with_helm(kubectl: Kubectl, values_file: Path, *, timeout: float = 300.0) -> None:
    helm(
        kubectl,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        APP_NAMESPACE,
        "--values",
        str(values_file),
        "--wait",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 60,
    )


def helm_test(kubectl: Kubectl, *, timeout: float = 180.0) -> str:
    return helm(
        kubectl,
        "test",
        RELEASE,
        "--namespace",
        APP_NAMESPACE,
        "--logs",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 60,
    )


def install_with_sdk(
    kubectl: Kubectl, values: Mapping[str, Any], *, timeout: float = 300.0
) -> None:
    """Render with Helm's engine and ``kubectl apply`` everything but the hooks."""
    objects = [obj for obj in render_release(values) if not is_hook(obj)]
    kubectl.apply(objects, namespace=APP_NAMESPACE)
    kubectl.rollout_status(APP_NAMESPACE, f"deployment/{FULLNAME}", timeout=timeout)


def sdk_test(kubectl: Kubectl, values: Mapping[str, Any], *, timeout: float = 180.0) -> str:
    """What ``helm test`` does: run the chart's test hook Pod and require it to succeed."""
    pods = [
        obj
        for obj in render_release(values)
        if is_hook(obj) and "test" in obj["metadata"]["annotations"][HOOK_ANNOTATION].split(",")
    ]
    if len(pods) != 1 or pods[0]["kind"] != "Pod":
        raise E2EError(f"expected one test hook Pod in the chart, found {len(pods)}")
    name = pods[0]["metadata"]["name"]
    kubectl("delete", "pod", name, "--namespace", APP_NAMESPACE, "--ignore-not-found", timeout=90)
    kubectl.apply(pods, namespace=APP_NAMESPACE)

    def finished() -> str | None:
        phase = kubectl(
            "get", "pod", name, "--namespace", APP_NAMESPACE, "--output=jsonpath={.status.phase}"
        ).stdout
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(f"test pod {name} to finish", finished, timeout=timeout)
    logs = kubectl("logs", name, "--namespace", APP_NAMESPACE, check=False).stdout
    if phase != "Succeeded":
        raise E2EError(f"test pod {name} ended {phase}: {redact(logs)[-1000:]}")
    kubectl("delete", "pod", name, "--namespace", APP_NAMESPACE, "--wait=false", timeout=60)
    return logs


def app_pod(kubectl: Kubectl) -> dict[str, Any]:
    """The release's one running app pod (not the test pod, not one being deleted)."""
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=token-sidecar"
    listed: list[dict[str, Any]] = kubectl.json(
        "get", "pods", "--namespace", APP_NAMESPACE, "--selector", selector
    )["items"]
    pods = [
        pod
        for pod in listed
        if not pod["metadata"].get("deletionTimestamp")
        and any(c["name"] == APP_CONTAINER for c in pod["spec"].get("containers", []))
    ]
    if len(pods) != 1:
        raise E2EError(f"expected one app pod, found {len(pods)}")
    return pods[0]


# -- checks ----------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    """An RFC 3339 time as Kubernetes and the token files write it (``...Z``)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without a zone: {value!r}")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class StartTimes:
    sidecar_started: datetime
    pod_initialized: datetime
    app_started: datetime


def _status(statuses: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((s for s in statuses if s.get("name") == name), None)


def native_order_problems(
    pod: Mapping[str, Any],
    *,
    sidecar: str = SIDECAR_CONTAINER,
    app: str = APP_CONTAINER,
) -> tuple[list[str], StartTimes | None]:
    """Whether the pod ran the sidecar natively and started the app only after it was started.

    Kubernetes marks a native sidecar "started" when its startup probe passes (here: /readyz,
    so the first token exists), and sets the pod condition Initialized only then. So the order
    must be: sidecar running <= Initialized <= app running. Returns the problems (empty when
    all holds) and the three times when they could be read.
    """
    problems: list[str] = []
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    init_spec = _status(spec.get("initContainers", []), sidecar)
    if init_spec is None:
        problems.append(f"{sidecar} is not an init container: not a native sidecar")
    else:
        if init_spec.get("restartPolicy") != "Always":
            problems.append(f"{sidecar} has no restartPolicy: Always")
        if "startupProbe" not in init_spec:
            problems.append(f"{sidecar} has no startup probe")
    side = _status(status.get("initContainerStatuses", []), sidecar)
    main = _status(status.get("containerStatuses", []), app)
    if side is None or main is None:
        problems.append(f"pod status lacks {sidecar if side is None else app}")
        return problems, None
    for name, entry in ((sidecar, side), (app, main)):
        if "running" not in entry.get("state", {}):
            problems.append(f"{name} is not running: {entry.get('state')}")
        if entry.get("restartCount", 0) != 0:
            problems.append(f"{name} restarted {entry['restartCount']} times")
    if side.get("started") is not True:
        problems.append(f"{sidecar} is not marked started (startup probe not passed)")
    initialized = next(
        (c for c in status.get("conditions", []) if c.get("type") == "Initialized"), None
    )
    if initialized is None or initialized.get("status") != "True":
        problems.append("pod condition Initialized is not True")
    if problems:
        return problems, None
    times = StartTimes(
        sidecar_started=parse_time(side["state"]["running"]["startedAt"]),
        pod_initialized=parse_time(initialized["lastTransitionTime"]),  # type: ignore[index]
        app_started=parse_time(main["state"]["running"]["startedAt"]),
    )
    if not times.sidecar_started <= times.pod_initialized <= times.app_started:
        problems.append(
            "start order: expected sidecar started <= pod Initialized <= app started, got "
            f"{times.sidecar_started.isoformat()}, {times.pod_initialized.isoformat()}, "
            f"{times.app_started.isoformat()}"
        )
    return problems, times


def token_problems(
    token: Mapping[str, Any], *, now: datetime, skew: timedelta = timedelta(seconds=5)
) -> list[str]:
    """What is wrong with a ``token.json`` at ``now`` (empty: a usable token)."""
    problems: list[str] = []
    if not isinstance(token.get("access_token"), str) or not token["access_token"]:
        problems.append("access_token missing or empty")
    if str(token.get("token_type", "")).lower() != "bearer":
        problems.append(f"token_type {token.get('token_type')!r}, expected Bearer")
    try:
        expires_at = parse_time(str(token["expires_at"]))
        issued_at = parse_time(str(token["issued_at"]))
    except (KeyError, ValueError) as exc:
        problems.append(f"expires_at/issued_at unreadable: {exc}")
        return problems
    if expires_at <= now:
        problems.append(f"expired: expires_at {expires_at.isoformat()} <= now {now.isoformat()}")
    if issued_at > now + skew:
        problems.append(f"issued_at {issued_at.isoformat()} is in the future")
    if expires_at <= issued_at:
        problems.append("expires_at is not after issued_at")
    return problems
