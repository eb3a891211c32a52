"""Test helpers: two hosts in namespaces on a veth underlay, hooks called directly.

Hooks run in a dedicated thread that entered the host's namespace (``setns`` is per
thread), with its own event loop; worker threads started from it inherit the namespace.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

from flannel.backend import BackendContext, ExternalInterface
from flannel.config import NetworkConfig
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel.testing.netns import Netns, run_in_netns

T = TypeVar("T")
NETWORK = IPv4Network("10.244.0.0/16")
NETWORK6 = IPv6Network("fd00:10:244::/56")


def in_netns(ns: Netns, make: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncio body on a thread inside ``ns`` (see flannel.testing.netns)."""
    return run_in_netns(ns.name, make)


@dataclass
class Host:
    """One host namespace with an underlay veth end ``ext0``."""

    ns: Netns
    ip: IPv4Address
    ip6: IPv6Address | None
    subnet: IPv4Network
    subnet6: IPv6Network | None = None
    acquired: list[dict[str, Any]] = field(default_factory=list)

    def ifindex(self, name: str) -> int:
        return int(self.ns.sh(f"cat /sys/class/net/{name}/ifindex"))

    def ext(self) -> ExternalInterface:
        return ExternalInterface(
            name="ext0",
            index=self.ifindex("ext0"),
            mtu=1500,
            iface_addr=self.ip,
            iface_v6_addr=self.ip6,
            ext_addr=self.ip,
            ext_v6_addr=self.ip6,
        )

    def ctx(self, backend: dict[str, Any], ipv6: bool = False) -> BackendContext:
        config = NetworkConfig(
            network=NETWORK,
            subnet_len=24,
            subnet_min=IPv4Address("10.244.1.0"),
            subnet_max=IPv4Address("10.244.255.0"),
            enable_ipv6=ipv6,
            ipv6_network=NETWORK6 if ipv6 else None,
            ipv6_subnet_len=64 if ipv6 else 0,
            backend_type="vxlan",
            backend={"Type": "vxlan", **backend},
        )

        async def acquire_lease(
            *, backend_type: str, backend_data: Any = None, backend_v6_data: Any = None
        ) -> Lease:
            self.acquired.append(
                {"type": backend_type, "data": backend_data, "v6data": backend_v6_data}
            )
            return self.lease(backend_data, backend_v6_data if ipv6 else None)

        return BackendContext(
            backend_type="vxlan",
            network=config,
            ext_iface=self.ext(),
            acquire_lease=acquire_lease,
            metrics=Metrics(),
        )

    def lease(self, data: Any, v6data: Any = None, backend_type: str = "vxlan") -> Lease:
        return Lease(
            subnet=self.subnet,
            ipv6_subnet=self.subnet6 if v6data is not None else None,
            attrs=LeaseAttrs(
                public_ip=self.ip,
                public_ipv6=self.ip6 if v6data is not None else None,
                backend_type=backend_type,
                backend_data=data,
                backend_v6_data=v6data,
            ),
        )

    def json(self, command: str) -> list[dict[str, Any]]:
        out = self.ns.sh(command)
        return json.loads(out) if out.strip() else []

    def neighs(self, dev: str = "flannel.1", family: str = "-4") -> set[tuple[str, str]]:
        rows = self.json(f"ip -j {family} neigh show dev {dev} nud permanent")
        return {(r["dst"], r["lladdr"]) for r in rows}

    def fdb(self, dev: str = "flannel.1") -> set[tuple[str, str]]:
        rows = self.json(f"bridge -j fdb show dev {dev}")
        return {(r["mac"], r["dst"]) for r in rows if "dst" in r}

    def routes(self, dev: str = "flannel.1", family: str = "-4") -> set[tuple[str, str]]:
        rows = self.json(f"ip -j {family} route show dev {dev}")
        return {(r["dst"], r.get("gateway", "")) for r in rows if r.get("protocol") != "kernel"}


def make_hosts(netns_factory: Callable[[str], Netns], ipv6: bool = False) -> tuple[Host, Host]:
    """Two hosts joined by a veth pair: 198.18.0.1/24 and 198.18.0.2/24 (+2001:db8::1/2)."""
    a, b = netns_factory("vxa"), netns_factory("vxb")
    a.sh(f"ip link add ext0 type veth peer name ext0 netns {b.name}")
    hosts = []
    for n, ns in enumerate((a, b), start=1):
        ns.sh(f"ip addr add 198.18.0.{n}/24 dev ext0 && ip link set ext0 up")
        if ipv6:
            ns.sh(f"ip -6 addr add 2001:db8::{n}/64 dev ext0 nodad")
        hosts.append(
            Host(
                ns=ns,
                ip=IPv4Address(f"198.18.0.{n}"),
                ip6=IPv6Address(f"2001:db8::{n}") if ipv6 else None,
                subnet=IPv4Network(f"10.244.{n}.0/24"),
                subnet6=IPv6Network(f"fd00:10:244:{n}::/64") if ipv6 else None,
            )
        )
    return hosts[0], hosts[1]


def added(lease: Lease) -> Event:
    return Event.added(lease)
