"""What one peer lease needs in the kernel, per address family (pure; no I/O).

A vxlan peer needs, in this order, a neighbour entry (peer subnet's network address ->
VtepMAC), an FDB entry (VtepMAC -> peer public IP) and an onlink route via that network
address; a DirectRouting peer on our L2 segment needs only a route via its public IP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.lease import Lease
from flannel.netlink.neigh import FdbEntry, NeighEntry, format_mac, parse_mac
from flannel.netlink.routes import Route

__all__ = ["BACKEND_TYPE", "PeerPlan", "PeerTarget", "direct_plan", "peer_targets", "vxlan_plan"]

BACKEND_TYPE = "vxlan"

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class PeerDataError(ValueError):
    """A peer lease whose vxlan data we cannot use (message names the lease and value)."""


@dataclass(frozen=True)
class PeerTarget:
    """One family of one peer: where its subnet lives and how to reach its VTEP."""

    key: str
    subnet: IPNetwork
    public_ip: IPAddress
    vtep_mac: str

    @property
    def family(self) -> int:
        return self.subnet.version


@dataclass(frozen=True)
class PeerPlan:
    """The kernel entries one peer family needs; ``direct`` plans have a route only."""

    key: str
    family: int
    neighs: tuple[NeighEntry, ...] = ()
    fdbs: tuple[FdbEntry, ...] = ()
    routes: tuple[Route, ...] = ()
    direct: bool = False

    @property
    def plan_id(self) -> tuple[str, int]:
        return (self.key, self.family)


def vtep_mac(data: Any, key: str, field: str) -> str:
    """The ``VtepMAC`` of a lease's backend data (keys case-insensitive, as Go decodes)."""
    if not isinstance(data, Mapping):
        raise PeerDataError(
            f"peer lease {key}: {field} is {data!r:.60}, not an object with VtepMAC"
        )
    lowered = {str(k).lower(): v for k, v in data.items()}
    mac = lowered.get("vtepmac")
    if not isinstance(mac, str):
        raise PeerDataError(f"peer lease {key}: {field} has no VtepMAC string ({data!r:.80})")
    try:
        return format_mac(parse_mac(mac))
    except ValueError as exc:
        raise PeerDataError(f"peer lease {key}: {field}.VtepMAC: {exc}") from None


def peer_targets(lease: Lease, want_v4: bool, want_v6: bool) -> list[PeerTarget]:
    """The families of ``lease`` we can program (raises PeerDataError on bad vxlan data)."""
    attrs = lease.attrs
    targets: list[PeerTarget] = []
    if want_v4 and lease.subnet is not None and attrs.public_ip != IPv4Address("0.0.0.0"):
        mac = vtep_mac(attrs.backend_data, lease.key, "BackendData")
        targets.append(PeerTarget(lease.key, lease.subnet, attrs.public_ip, mac))
    if want_v6 and lease.ipv6_subnet is not None and attrs.public_ipv6 is not None:
        mac = vtep_mac(attrs.backend_v6_data, lease.key, "BackendV6Data")
        targets.append(PeerTarget(lease.key, lease.ipv6_subnet, attrs.public_ipv6, mac))
    return targets


def vxlan_plan(target: PeerTarget, dev_index: int) -> PeerPlan:
    gateway = target.subnet.network_address
    return PeerPlan(
        key=target.key,
        family=target.family,
        neighs=(NeighEntry(dev_index, gateway, target.vtep_mac),),
        fdbs=(FdbEntry(dev_index, target.vtep_mac, target.public_ip),),
        routes=(Route(target.subnet, gateway, dev_index, onlink=True),),
    )


def direct_plan(target: PeerTarget, oif: int) -> PeerPlan:
    return PeerPlan(
        key=target.key,
        family=target.family,
        routes=(Route(target.subnet, target.public_ip, oif),),
        direct=True,
    )
