"""What to change in one VPC route table: pure logic, no AWS calls.

A table is right when our lease subnet has an active route whose target is our ENI (or our
instance), and when no route inside the flannel Network is a blackhole or a leftover of an
earlier lease of ours. Routes that AWS made (``local``, propagated) are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

__all__ = ["TablePlan", "Target", "plan_table", "points_at"]


@dataclass(frozen=True)
class Target:
    """Our end of a route: the ENI holding the interface address, on our instance."""

    instance_id: str
    eni_id: str


@dataclass(frozen=True)
class TablePlan:
    table_id: str
    own_cidr: str
    action: str  # "keep", "create" or "replace"
    delete: tuple[str, ...] = field(default=())
    """Destination CIDRs to delete: blackholes and our stale routes inside the Network."""

    @property
    def changes(self) -> bool:
        return self.action != "keep" or bool(self.delete)


def points_at(route: Mapping[str, Any], target: Target) -> bool:
    """True if the route sends traffic to our ENI (or to our instance when no ENI is named)."""
    eni = route.get("NetworkInterfaceId")
    if eni:
        return bool(eni == target.eni_id)
    return bool(route.get("InstanceId") == target.instance_id)


def _inside(cidr: str, network: IPv4Network) -> bool:
    try:
        return IPv4Network(cidr).subnet_of(network)
    except ValueError:
        return False


def plan_table(
    table_id: str,
    routes: Iterable[Mapping[str, Any]],
    own: IPv4Network,
    network: IPv4Network,
    target: Target,
) -> TablePlan:
    """Decide the changes that make ``table_id`` right for our lease subnet ``own``."""
    own_cidr = str(own)
    action = "create"
    delete: list[str] = []
    for route in routes:
        cidr = route.get("DestinationCidrBlock")
        if not isinstance(cidr, str):
            continue  # IPv6 or prefix-list routes: not ours
        if cidr == own_cidr:
            right = points_at(route, target) and route.get("State") == "active"
            action = "keep" if right else "replace"
            continue
        if route.get("Origin") != "CreateRoute" or not _inside(cidr, network):
            continue
        if route.get("State") == "blackhole" or points_at(route, target):
            delete.append(cidr)
    return TablePlan(table_id, own_cidr, action, tuple(delete))
