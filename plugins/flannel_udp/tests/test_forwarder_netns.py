"""The forwarder between two namespaces (TUN in each, veth underlay), C and Python paths.

No daemon and no etcd: the test plays the daemon's part by filling the peer table.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from flannel.testing.netns import Netns
from flannel_udp import packet
from flannel_udp.datapath import fastpath_available
from flannel_udp.testing import PORT, ForwarderHost, in_netns, pair_hosts

pytestmark = pytest.mark.netns

IP_TTL, IP_RECVTTL = 2, 12  # linux/in.h (IP_RECVTTL is Python 3.12+)

_NO_C = pytest.mark.skipif(not fastpath_available(), reason="C extension not built")
# (data path, offload): the Python fallback, C with TSO/GRO (the default), plain C.
DATAPATHS = [
    pytest.param(("python", False), id="python"),
    pytest.param(("c", True), id="c-offload", marks=_NO_C),
    pytest.param(("c", False), id="c-plain", marks=_NO_C),
]


@pytest.fixture(params=DATAPATHS)
def hosts(
    request: pytest.FixtureRequest, netns_factory: Callable[[str], Netns]
) -> Iterator[tuple[ForwarderHost, ForwarderHost]]:
    datapath, offload = request.param
    with pair_hosts(netns_factory, datapath, offload=offload) as pair:
        yield pair


def stats(host: ForwarderHost) -> dict[str, int]:
    assert host.forwarder is not None
    return host.forwarder.stats()


@pytest.mark.timeout(60)
def test_ping_both_ways(hosts: tuple[ForwarderHost, ForwarderHost]) -> None:
    a, b = hosts
    a.ns.sh("ping -c 3 -i 0.2 -W 2 10.244.2.0")
    b.ns.sh("ping -c 3 -i 0.2 -W 2 10.244.1.0")
    sa, sb = stats(a), stats(b)
    assert sa["udp_tx_packets"] >= 6 and sa["tun_tx_packets"] >= 6
    assert sb["udp_rx_packets"] >= 6 and sb["drop_unknown_source"] == 0


@pytest.mark.timeout(60)
def test_pods_talk_and_ttl_is_decremented_on_both_ends(
    hosts: tuple[ForwarderHost, ForwarderHost], netns_factory: Callable[[str], Netns]
) -> None:
    a, b = hosts
    pod_a = a.add_pod(netns_factory)
    pod_b = b.add_pod(netns_factory)
    out = a.pods[0].sh(f"ping -c 2 -i 0.2 -W 2 -t 64 {pod_b}")
    # pod A -> host A (64 -> 63) -> egress forwarder (62) -> ingress forwarder (61) -> host B
    # routing into the pod (60); the reply gets the same treatment: 64 - 4.
    assert "ttl=60" in out, out
    b.pods[0].sh(f"ping -c 2 -i 0.2 -W 2 {pod_a}")


@pytest.mark.timeout(60)
def test_unknown_destination_gets_net_unreachable(
    hosts: tuple[ForwarderHost, ForwarderHost],
) -> None:
    a, _ = hosts
    done = a.ns.run(["ping", "-c", "1", "-W", "2", "10.244.9.9"], check=False)
    assert done.returncode != 0
    assert "Destination Net Unreachable" in done.stdout, done.stdout
    assert "10.244.1.0" in done.stdout  # the error comes from our TUN address
    assert stats(a)["icmp_unreachable"] >= 1
    assert stats(a)["drop_no_route"] >= 1


def _inner_udp(src: str, dst: str, dport: int, payload: bytes, ttl: int = 64) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, ttl, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    )  # fmt: skip
    header[10:12] = packet.checksum(header).to_bytes(2, "big")
    return bytes(header) + udp


def _send_from(ns: Netns, src: str, dst: str, data: bytes) -> None:
    with in_netns(ns.name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((src, 0))
        sock.sendto(data, (dst, PORT))


def _receive(sock: socket.socket, timeout: float) -> tuple[bytes, int] | None:
    sock.settimeout(timeout)
    try:
        data, anc, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(4))
    except TimeoutError:
        return None
    ttl = next(int.from_bytes(d[:4], "little") for lvl, typ, d in anc if typ == IP_TTL)
    return data, ttl


@pytest.mark.timeout(60)
def test_datagram_from_non_peer_is_dropped_and_counted(
    hosts: tuple[ForwarderHost, ForwarderHost],
) -> None:
    a, b = hosts
    a.ns.sh("ip addr add 198.18.0.3/24 dev ul0")  # an address B has no lease for
    with in_netns(b.ns.name):
        pod_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pod_sock:
        pod_sock.bind((str(b.tun_addr), 5555))
        pod_sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        inner = _inner_udp("10.244.1.0", str(b.tun_addr), 5555, b"injected")
        before = stats(b)["drop_unknown_source"]
        _send_from(a.ns, "198.18.0.3", str(b.underlay), inner)
        assert _receive(pod_sock, 1.0) is None
        assert stats(b)["drop_unknown_source"] == before + 1
        # Control: the same datagram from the peer's public IP is delivered, TTL - 1.
        _send_from(a.ns, str(a.underlay), str(b.underlay), inner)
        got = _receive(pod_sock, 5.0)
        assert got == (b"injected", 63)


@pytest.mark.timeout(90)
def test_peer_churn_does_not_pause_traffic(hosts: tuple[ForwarderHost, ForwarderHost]) -> None:
    """Thousands of other peers come and go while A pings B: no packet is lost."""
    a, _ = hosts
    assert a.forwarder is not None
    ping = subprocess.Popen(
        ["ip", "netns", "exec", a.ns.name, "ping", "-c", "40", "-i", "0.05", "-W", "2",
         "10.244.2.0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    rounds = 0
    try:
        while ping.poll() is None:
            for third in range(3, 200):
                for fourth in range(0, 256, 16):
                    a.forwarder.set_route(int(IPv4Address(f"10.244.{third}.0")) + fourth, 28,
                                          int(IPv4Address("198.18.0.200")), PORT)  # fmt: skip
            for third in range(3, 200):
                for fourth in range(0, 256, 16):
                    a.forwarder.del_route(int(IPv4Address(f"10.244.{third}.0")) + fourth, 28)
            rounds += 1
            time.sleep(0)
    finally:
        out, _ = ping.communicate(timeout=30)
    assert rounds >= 1
    assert " 0% packet loss" in out, out
    assert a.forwarder.route_count() == 1


@pytest.mark.timeout(30)
def test_stop_is_prompt_and_restartable(hosts: tuple[ForwarderHost, ForwarderHost]) -> None:
    a, _ = hosts
    assert a.forwarder is not None and a.forwarder.alive
    a.forwarder.stop()
    assert not a.forwarder.running and not a.forwarder.alive
    a.forwarder.start()
    a.ns.sh("ping -c 1 -W 2 10.244.2.0")


def _tcp_transfer(sender: Netns, receiver: Netns, addr: str, size: int) -> tuple[str, str]:
    """Send ``size`` random bytes over TCP; return (sent sha256, received sha256)."""
    payload = random.Random(size).randbytes(size)
    with in_netns(receiver.name):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    got = hashlib.sha256()
    with server:
        server.bind((addr, 0))
        server.listen(1)
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(1 << 20):
                    got.update(chunk)

        thread = threading.Thread(target=serve)
        thread.start()
        with in_netns(sender.name):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with client:
            client.settimeout(60)
            client.connect((addr, port))
            client.sendall(payload)
        thread.join(timeout=60)
    return hashlib.sha256(payload).hexdigest(), got.hexdigest()


@pytest.mark.timeout(120)
def test_bulk_tcp_between_pods_arrives_intact(
    hosts: tuple[ForwarderHost, ForwarderHost], netns_factory: Callable[[str], Netns]
) -> None:
    """Segmentation (TSO) and coalescing (GRO) must not change a byte, both directions."""
    a, b = hosts
    pod_a, pod_b = a.add_pod(netns_factory), b.add_pod(netns_factory)
    sent, got = _tcp_transfer(a.pods[0], b.pods[0], str(pod_b), 24 << 20)
    assert sent == got
    sent, got = _tcp_transfer(b.pods[0], a.pods[0], str(pod_a), 8 << 20)
    assert sent == got
    sa, sb = stats(a), stats(b)
    assert sa["drop_malformed"] == sb["drop_malformed"] == 0
    assert sa["udp_tx_packets"] >= (24 << 20) // 1500
    assert sa["tun_rx_segments"] == sa["udp_tx_packets"]  # every segment was sent
    if a.offload:  # the kernel handed over super-packets and we wrote merged ones
        assert sa["tun_rx_packets"] < sa["udp_tx_packets"] // 4
        assert sb["tun_tx_writes"] < sb["tun_tx_packets"] // 4
    else:
        assert sb["tun_tx_writes"] == sb["tun_tx_packets"]


@_NO_C
@pytest.mark.timeout(120)
def test_offloaded_host_interoperates_with_a_plain_one(
    netns_factory: Callable[[str], Netns],
) -> None:
    """A C host with TSO/UDP GSO talks to a one-datagram-per-packet host (as Go flanneld is):
    the wire carries plain datagrams, each holding one bare IP packet."""
    with pair_hosts(netns_factory, "c", offload=True, peer_datapath="python") as (a, b):
        pod_a, pod_b = a.add_pod(netns_factory), b.add_pod(netns_factory)
        sent, got = _tcp_transfer(a.pods[0], b.pods[0], str(pod_b), 8 << 20)
        assert sent == got
        sent, got = _tcp_transfer(b.pods[0], a.pods[0], str(pod_a), 4 << 20)
        assert sent == got
        sb = stats(b)
        assert sb["drop_malformed"] == 0 and sb["tun_tx_writes"] == sb["tun_tx_packets"]
        assert sb["udp_rx_packets"] >= (8 << 20) // 1500  # segmented: one packet per datagram
