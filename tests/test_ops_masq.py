"""Masquerade end to end: a pod's packets to an address outside the flannel network leave
the host with the host's underlay address, and stop being rewritten after teardown.

Three namespaces: ``pod`` (10.244.1.2, default via the host), ``host`` (10.244.1.1 towards
the pod, 198.18.0.1 on the underlay, forwarding on) and ``recv`` (198.18.0.2, no route back
to the pod network), where a UDP receiver prints each datagram's source address.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network

import pytest

from flannel.ipmasq import IptablesDriver, MasqManager, NftablesDriver, netns_runner
from flannel.ipmasq.detect import MasqDriver
from flannel.testing.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.2", 9999))
print("ready", flush=True)
while True:
    data, (src, port) = s.recvfrom(100)
    print(data.decode(), src, flush=True)
"""

SEND = """
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[1].encode(), ("198.18.0.2", 9999))
"""


class Lab:
    def __init__(self, make: Callable[[str], Netns]) -> None:
        self.host, self.pod, self.recv = make("host"), make("pod"), make("recv")
        self.host.sh(f"ip link add pod0 type veth peer name eth0 netns {self.pod.name}")
        self.host.sh(f"ip link add ext0 type veth peer name eth0 netns {self.recv.name}")
        self.host.sh("ip addr add 10.244.1.1/24 dev pod0 && ip link set pod0 up")
        self.host.sh("ip addr add 198.18.0.1/24 dev ext0 && ip link set ext0 up")
        self.host.sh("sysctl -qw net.ipv4.ip_forward=1")
        self.pod.sh("ip addr add 10.244.1.2/24 dev eth0 && ip link set eth0 up")
        self.pod.sh("ip route add default via 10.244.1.1")
        self.recv.sh("ip addr add 198.18.0.2/24 dev eth0 && ip link set eth0 up")
        self.receiver = subprocess.Popen(
            ["ip", "netns", "exec", self.recv.name, "python3", "-c", RECEIVER],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.receiver.stdout is not None
        assert self.receiver.stdout.readline().strip() == "ready"
        self.sent = 0

    def source_seen(self) -> str:
        """Send one datagram (a fresh socket, so a fresh conntrack entry) and return its source
        address as the receiver saw it."""
        self.sent += 1
        tag = f"probe{self.sent}"
        self.pod.run(["python3", "-c", SEND, tag])
        assert self.receiver.stdout is not None
        line = self.receiver.stdout.readline().split()
        assert line[0] == tag, line
        return line[1]

    def close(self) -> None:
        self.receiver.kill()
        self.receiver.wait()


@pytest.fixture
def lab(netns_factory: Callable[[str], Netns]) -> Iterator[Lab]:
    lab = Lab(netns_factory)
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("kind", ["iptables", "nftables"])
async def test_pod_traffic_leaves_with_host_address(lab: Lab, kind: str) -> None:
    runner = netns_runner(lab.host.name)
    driver: MasqDriver = IptablesDriver(runner) if kind == "iptables" else NftablesDriver(runner)
    masq = MasqManager(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24"), driver=driver)

    assert lab.source_seen() == "10.244.1.2"  # plain forwarding: the pod address leaks out
    await masq.apply()
    assert lab.source_seen() == "198.18.0.1"  # masqueraded to the host's underlay address
    assert lab.source_seen() == "198.18.0.1"
    await masq.teardown()
    assert lab.source_seen() == "10.244.1.2"  # rules gone: no rewriting any more
