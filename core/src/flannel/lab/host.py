"""One lab host seen from outside: its namespaces, subnet.env, routes and pod."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flannel.lab.state import HostState
from flannel.lab.system import ns_run, proc_alive

if TYPE_CHECKING:
    from flannel.lab.lab import Lab

__all__ = ["HostStatus", "LabHost", "read_env"]


def read_env(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    env = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip()
    return env


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    segment: int
    subnet: str | None
    daemon: str
    """``running``, ``stopped`` or ``exited``."""
    peers_routed: int
    peers_total: int
    pod_ip: str | None


class LabHost:
    """One host of a lab: its namespaces, subnet.env, routes and pod."""

    def __init__(self, lab: Lab, state: HostState) -> None:
        self.lab = lab
        self.state = state

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def netns(self) -> str:
        return self.state.netns

    @property
    def pod_netns(self) -> str:
        return self.state.pod_netns

    @property
    def address(self) -> str:
        return self.state.address

    @property
    def dir(self) -> Path:
        return self.lab.dir / self.name

    @property
    def subnet_file(self) -> Path:
        return self.dir / "subnet.env"

    @property
    def log_file(self) -> Path:
        return self.dir / "flannel.log"

    @property
    def subnet_dir(self) -> Path:
        """``--subnet-dir`` of a multi-network lab: ``<name>.env`` per network."""
        return self.dir / "networks"

    def env_file(self, network: str | None = None) -> Path:
        return self.subnet_dir / f"{network}.env" if network else self.subnet_file

    def subnet_env(self, network: str | None = None) -> dict[str, str] | None:
        return read_env(self.env_file(network))

    @property
    def subnet(self) -> str | None:
        """The host's subnet (``10.244.5.0/24``) from subnet.env, if written yet."""
        return self.subnet_of(None)

    def subnet_of(self, network: str | None) -> str | None:
        """The host's subnet in ``network`` (None: the default network)."""
        env = self.subnet_env(network)
        if not env or "FLANNEL_SUBNET" not in env:
            return None
        return str(IPv4Interface(env["FLANNEL_SUBNET"]).network)

    def pod_netns_of(self, network: str | None) -> str:
        """The pod namespace for ``network`` (None: the default network's pod)."""
        return f"{self.netns}-{network}" if network else self.pod_netns

    def pod_ip_of(self, network: str | None) -> str | None:
        sub = self.subnet_of(network)
        return str(ip_network(sub)[2]) if sub else None

    @property
    def ipv6_subnet(self) -> str | None:
        env = self.subnet_env()
        if not env or "FLANNEL_IPV6_SUBNET" not in env:
            return None
        return str(IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network)

    @property
    def pod_ip(self) -> str | None:
        sub = self.subnet
        return str(ip_network(sub)[2]) if sub else None

    @property
    def pod_ip6(self) -> str | None:
        sub = self.ipv6_subnet
        return str(ip_network(sub)[2]) if sub else None

    def sh(self, command: str, check: bool = True) -> str:
        """Run a shell command in the host namespace; return stdout."""
        return ns_run(self.netns, ["sh", "-c", command], check=check).stdout

    def routes(self, family: int = 4) -> list[dict[str, Any]]:
        """The main table as ``ip -j route`` gives it (dicts with dst, gateway, dev, ...)."""
        out = ns_run(self.netns, ["ip", f"-{family}", "-j", "route", "show", "table", "main"])
        result: list[dict[str, Any]] = json.loads(out.stdout or "[]")
        return result

    def routes_to(self, subnets: Iterable[str], family: int = 4) -> set[str]:
        """Which of ``subnets`` this host has a (non-default) route covering."""
        nets = [ip_network(r["dst"]) for r in self.routes(family) if r.get("dst") != "default"]
        covered = set()
        for text in subnets:
            sub = ip_network(text)
            if any(_covers(net, sub) for net in nets):
                covered.add(text)
        return covered

    def daemon_running(self) -> bool:
        return proc_alive(self.state.daemon)


def _covers(net: IPv4Network | IPv6Network, sub: IPv4Network | IPv6Network) -> bool:
    if isinstance(net, IPv4Network) and isinstance(sub, IPv4Network):
        return sub.subnet_of(net)
    if isinstance(net, IPv6Network) and isinstance(sub, IPv6Network):
        return sub.subnet_of(net)
    return False
