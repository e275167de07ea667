"""A Pod Security Standards checker for the "restricted" profile, for tests.

Follows the published controls (kubernetes.io/docs/concepts/security/pod-security-standards,
policy version "latest"): every "baseline" control, then the "restricted" ones. It looks at a
pod spec and its annotations the way the admission plugin does: init, regular and ephemeral
containers alike, a container's setting winning over the pod's where both exist. Returns one
line per violation; empty means the pod would be admitted under ``enforce: restricted``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["restricted_violations"]

# Baseline: capabilities a container may add.
_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Restricted: the only volume types allowed.
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key) or []:
            yield f"{key}[{container.get('name')}]", container


def _pod_level(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    found = [
        f"host namespaces: spec.{f}" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)
    ]
    found += [
        f"hostPath volume {v.get('name')}" for v in spec.get("volumes") or [] if "hostPath" in v
    ]
    found += [
        f"AppArmor annotation {key}={value}"
        for key, value in annotations.items()
        if key.startswith("container.apparmor.security.beta.kubernetes.io/")
        and not (value == "runtime/default" or value.startswith("localhost/"))
    ]
    sysctls = (spec.get("securityContext") or {}).get("sysctls") or []
    found += [
        f"pod: unsafe sysctl {s.get('name')}" for s in sysctls if s.get("name") not in _SAFE_SYSCTLS
    ]
    return found


def _context(where: str, sc: Mapping[str, Any]) -> list[str]:
    """Baseline controls that apply to a pod's and a container's securityContext alike."""
    found = []
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"{where}: appArmorProfile {apparmor}")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append(f"{where}: seLinuxOptions {selinux}")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append(f"{where}: seccompProfile Unconfined")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"{where}: windowsOptions.hostProcess")
    return found


def _container_baseline(name: str, container: Mapping[str, Any]) -> list[str]:
    sc = container.get("securityContext") or {}
    found = _context(name, sc)
    if sc.get("privileged"):
        found.append(f"{name}: privileged")
    added = set((sc.get("capabilities") or {}).get("add") or []) - _BASELINE_CAPABILITIES
    if added:
        found.append(f"{name}: adds capabilities {sorted(added)}")
    found += [
        f"{name}: hostPort {port['hostPort']}"
        for port in container.get("ports") or []
        if port.get("hostPort")
    ]
    if sc.get("procMount", "Default") != "Default":
        found.append(f"{name}: procMount {sc['procMount']}")
    return found


def _baseline(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    found = _pod_level(pod) + _context("pod", spec.get("securityContext") or {})
    for name, container in _containers(spec):
        found += _container_baseline(name, container)
    return found


def _restricted(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    found: list[str] = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            found.append(f"volume {volume.get('name')}: type {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for name, container in _containers(spec):
        sc = container.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities.drop must include ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{name}: may add only NET_BIND_SERVICE, adds {sorted(added)}")
    return found


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """Every way ``pod`` (a whole Pod object) breaks Pod Security "restricted"."""
    return _baseline(pod) + _restricted(pod)
