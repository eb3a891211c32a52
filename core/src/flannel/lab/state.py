"""The lab's state file: every namespace and process it made, so ``down`` finds them all.

Written before each thing is created (intent first), so a crash half-way still leaves a
record that ``flannel lab down`` can clean up from.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HostState", "LabState", "ProcRecord", "state_root"]


def state_root() -> Path:
    """Where labs keep state: ``$FLANNEL_LAB_STATE`` or ``/run/flannel-lab``."""
    return Path(os.environ.get("FLANNEL_LAB_STATE", "/run/flannel-lab"))


@dataclass
class ProcRecord:
    """A process we started; ``start_time`` (from /proc) guards against PID reuse."""

    pid: int
    start_time: int
    argv: list[str] = field(default_factory=list)


@dataclass
class HostState:
    name: str
    index: int
    netns: str
    pod_netns: str
    segment: int
    address: str
    address6: str | None = None
    hub_veth: str = ""
    daemon: ProcRecord | None = None
    pod_subnet: str | None = None
    """The FLANNEL_SUBNET the pod network was built from (rebuilt if it changes)."""
    args: list[str] = field(default_factory=list)
    """Extra ``flannel run`` arguments for this host only."""
    net_pods: dict[str, str] = field(default_factory=dict)
    """Multi-network labs: network name -> the env key its pod was built from."""


@dataclass
class LabState:
    name: str
    prefix: str
    backend: str
    config: dict[str, Any]
    segments: int = 1
    ipv6: bool = False
    etcd_prefix: str = "/coreos.com/network"
    daemon_args: list[str] = field(default_factory=list)
    hub: str = ""
    router: str | None = None
    etcd: ProcRecord | None = None
    namespaces: list[str] = field(default_factory=list)
    hosts: dict[str, HostState] = field(default_factory=dict)
    next_index: int = 1
    server: bool = False
    """Client/server lab: a ``--listen`` server in the hub, hosts use ``--remote``."""
    server_args: list[str] = field(default_factory=list)
    server_proc: ProcRecord | None = None
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Multi-network lab: name -> config at ``<etcd_prefix>/<name>/config``."""

    @property
    def path(self) -> Path:
        return state_root() / self.prefix / "state.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> LabState:
        doc = json.loads(path.read_text())
        hosts = {}
        for name, raw in doc.pop("hosts", {}).items():
            daemon = raw.pop("daemon", None)
            hosts[name] = HostState(**raw, daemon=ProcRecord(**daemon) if daemon else None)
        etcd = doc.pop("etcd", None)
        server = doc.pop("server_proc", None)
        return cls(
            **doc,
            hosts=hosts,
            etcd=ProcRecord(**etcd) if etcd else None,
            server_proc=ProcRecord(**server) if server else None,
        )
