"""Test and benchmark helpers: udp forwarders between network namespaces, no daemon needed.

``ForwarderHost`` is one "host" namespace with an underlay veth address, flannel0 and a
forwarder (C or Python) running in this process. ``pair_hosts`` wires two of them to each
other through a veth pair in 198.18.0.0/24 (RFC 2544 benchmark space). Optional "pod"
namespaces hang off each host through a veth, addressed inside the host's subnet.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from flannel.testing.netns import Netns, in_netns
from flannel_udp.datapath import Forwarder, make_forwarder, resolve_datapath, wants_offload
from flannel_udp.tun import open_tun

__all__ = ["ForwarderHost", "in_netns", "pair_hosts"]

POD_NETWORK = IPv4Network("10.244.0.0/16")
PORT = 8285


@dataclass
class ForwarderHost:
    ns: Netns
    underlay: IPv4Address
    subnet: IPv4Network
    datapath: str
    mtu: int = 1472
    offload: bool | None = None
    """TSO/GRO between TUN and forwarder (C only); None = what the daemon would pick."""
    tun_fd: int = -1
    sock: socket.socket | None = None
    forwarder: Forwarder | None = None
    pods: list[Netns] = field(default_factory=list)

    @property
    def tun_addr(self) -> IPv4Address:
        return self.subnet.network_address

    def open(self) -> None:
        """Open flannel0 and the socket inside the namespace; configure and start."""
        offload = self.offload
        if offload is None:
            offload = wants_offload(resolve_datapath(self.datapath))
        with in_netns(self.ns.name):
            self.tun_fd, _ = open_tun("flannel0", offload=offload)
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((str(self.underlay), PORT))
        for opt in (33, 32):  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self.ns.sh(
            f"ip link set flannel0 mtu {self.mtu} up && "
            f"ip addr add {self.tun_addr}/32 dev flannel0 && "
            f"ip route add {POD_NETWORK} dev flannel0 && "
            "sysctl -qw net.ipv4.conf.flannel0.accept_local=1"
        )
        self.forwarder = make_forwarder(
            self.tun_fd, self.sock.fileno(), int(self.tun_addr), self.datapath, offload
        )
        self.forwarder.start()

    def add_peer(self, other: ForwarderHost) -> None:
        assert self.forwarder is not None
        self.forwarder.set_route(
            int(other.subnet.network_address), other.subnet.prefixlen, int(other.underlay), PORT
        )

    def add_pod(self, make_ns: Callable[[str], Netns], index: int = 0) -> IPv4Address:
        """A pod namespace behind a veth; returns its address (subnet .10+index)."""
        pod = make_ns(f"pod{self.subnet.network_address.packed[2]}")
        addr = self.subnet.network_address + 10 + index
        host_if, pod_if = f"vp{len(self.pods)}{pod.name[-3:]}"[-15:], "eth0"
        gw = self.subnet.network_address + 1
        self.ns.sh(
            f"ip link add {host_if} type veth peer name {pod_if} netns {pod.name} && "
            f"ip addr add {gw}/32 dev {host_if} && ip link set {host_if} up && "
            f"ip route add {addr}/32 dev {host_if} && sysctl -qw net.ipv4.ip_forward=1"
        )
        pod.sh(
            f"ip addr add {addr}/32 dev eth0 && ip link set eth0 mtu {self.mtu} up && "
            f"ip route add {gw}/32 dev eth0 && ip route add default via {gw} dev eth0"
        )
        self.pods.append(pod)
        return addr

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tun_fd >= 0:
            os.close(self.tun_fd)
            self.tun_fd = -1


@contextlib.contextmanager
def pair_hosts(
    make_ns: Callable[[str], Netns],
    datapath: str,
    *,
    underlay_mtu: int = 1500,
    offload: bool | None = None,
    peer_datapath: str | None = None,
    peer_offload: bool | None = None,
) -> Iterator[tuple[ForwarderHost, ForwarderHost]]:
    """Two forwarder hosts (10.244.1.0/24 at 198.18.0.1, 10.244.2.0/24 at 198.18.0.2)
    that know each other as peers; ``peer_datapath``/``peer_offload`` make B differ."""
    a = ForwarderHost(make_ns("hosta"), IPv4Address("198.18.0.1"), IPv4Network("10.244.1.0/24"),
                      datapath, mtu=underlay_mtu - 28, offload=offload)  # fmt: skip
    b = ForwarderHost(make_ns("hostb"), IPv4Address("198.18.0.2"), IPv4Network("10.244.2.0/24"),
                      peer_datapath or datapath, mtu=underlay_mtu - 28,
                      offload=offload if peer_datapath is None else peer_offload)  # fmt: skip
    a.ns.sh(f"ip link add ul0 mtu {underlay_mtu} type veth peer name ul0 netns {b.ns.name}")
    for host in (a, b):
        host.ns.sh(f"ip addr add {host.underlay}/24 dev ul0 && ip link set ul0 up")
    try:
        for host in (a, b):
            host.open()
        a.add_peer(b)
        b.add_peer(a)
        yield a, b
    finally:
        a.close()
        b.close()
