"""A source of peer lease events for driving a backend's ``handle_events`` in tests.

peers = EventSource(backend_type="vxlan")
batch = [peers.add(1, backend_data={"VNI": 1, "VtepMAC": "0a:.."}), peers.add(2)]
peers.change(1, public_ip="198.18.0.21")   # Added again with new attributes
peers.remove(2)                            # Removed, carrying the last attributes
peers.snapshot()                           # every current peer as Added
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs

__all__ = ["EventSource", "peer_lease"]


def peer_lease(
    n: int,
    *,
    network: str = "10.244.0.0/16",
    subnet_len: int = 24,
    public_ip: str | None = None,
    backend_type: str = "",
    backend_data: Any = None,
    ipv6_network: str | None = None,
    public_ipv6: str | None = None,
) -> Lease:
    """Peer ``n``'s lease: the n-th subnet of ``network``, public IP 198.18.(n//250).(n%250+10)."""
    net = IPv4Network(network)
    size = 2 ** (32 - subnet_len)
    subnet = IPv4Network(f"{net.network_address + n * size}/{subnet_len}")
    if not subnet.subnet_of(net):
        raise ValueError(f"peer {n} does not fit in {network} with /{subnet_len} subnets")
    ipv6_subnet = None
    if ipv6_network is not None:
        v6 = IPv6Network(ipv6_network)
        ipv6_subnet = IPv6Network(f"{v6.network_address + (n << 64)}/64")
    address = public_ip or f"198.18.{n // 250}.{n % 250 + 10}"
    return Lease(
        subnet=subnet,
        attrs=LeaseAttrs(
            public_ip=IPv4Address(address),
            public_ipv6=IPv6Address(public_ipv6) if public_ipv6 else None,
            backend_type=backend_type,
            backend_data=backend_data,
        ),
        ipv6_subnet=ipv6_subnet,
        expiration=float("inf"),
    )


class EventSource:
    """Peers keyed by number; every call returns the event a subnet manager would send."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.peers: dict[int, Lease] = {}

    def add(self, n: int, **overrides: Any) -> Event:
        lease = peer_lease(n, **{**self.defaults, **overrides})
        self.peers[n] = lease
        return Event.added(lease)

    def change(self, n: int, **attrs: Any) -> Event:
        """Added again with changed attributes (``public_ip``, ``backend_data``, ...)."""
        lease = self.peers[n]
        fields = {"public_ip": IPv4Address, "public_ipv6": IPv6Address}
        new: dict[str, Any] = {
            k: fields[k](v) if k in fields and v is not None else v for k, v in attrs.items()
        }
        self.peers[n] = replace(lease, attrs=replace(lease.attrs, **new))
        return Event.added(self.peers[n])

    def remove(self, n: int) -> Event:
        return Event.removed(self.peers.pop(n))

    def snapshot(self) -> list[Event]:
        return [Event.added(lease) for _, lease in sorted(self.peers.items())]
