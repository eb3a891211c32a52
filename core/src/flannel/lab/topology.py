"""The lab's wiring: hub bridge(s), an optional router, host namespaces and pods.

Addresses (``s`` = segment, ``i`` = host index): segment ``s`` is 198.18.s.0/24
(2001:db8:0:s::/64) on bridge ``br<s>`` in the hub; the hub is 198.18.0.1 (etcd); the
router (segments > 1) is 198.18.s.254 on every segment; host ``h<i>`` is 198.18.s.(10+i)
on its ``eth0``. Pods follow the CNI bridge plugin: ``cni0`` holds FLANNEL_SUBNET's .1,
the pod is .2 with FLANNEL_MTU and a default route via .1.
"""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface

from flannel.lab.system import LabError, ip, ip_batch, netns_add, ns_run

__all__ = [
    "HUB_ADDR",
    "MAX_HOSTS",
    "SERVER_PORT",
    "host_addresses",
    "make_host",
    "make_hub",
    "make_pod",
    "make_router",
]

HUB_ADDR = "198.18.0.1"
SERVER_PORT = 8080
"""Where a client/server lab's ``--listen`` server listens (on HUB_ADDR)."""
MAX_HOSTS = 240


def host_addresses(index: int, segment: int) -> tuple[str, str]:
    if not 1 <= index <= MAX_HOSTS:
        raise LabError(f"host index {index} out of range 1..{MAX_HOSTS}: the lab is full")
    return f"198.18.{segment}.{10 + index}", f"2001:db8:0:{segment}::{10 + index:x}"


def _forwarding(netns: str) -> None:
    ns_run(netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])


def make_hub(hub: str, segments: int, ipv6: bool) -> None:
    netns_add(hub)
    lines = []
    for s in range(segments):
        # A fixed MAC: a bridge without one takes its lowest port's, so removing a host
        # would change br0's MAC behind every other host's ARP entry for the hub.
        mac = f"02:00:c6:12:{s:02x}:01"
        lines += [f"link add br{s} address {mac} type bridge", f"link set br{s} up"]
    lines.append(f"addr add {HUB_ADDR}/24 dev br0")
    if ipv6:
        lines.append("addr add 2001:db8::1/64 dev br0 nodad")
    if segments > 1:
        lines.append("route add default via 198.18.0.254")
        if ipv6:
            lines.append("route add default via 2001:db8::fe")
    ip_batch(hub, lines)


def make_router(hub: str, router: str, segments: int, ipv6: bool) -> None:
    netns_add(router)
    for s in range(segments):
        ip("-n", hub, "link", "add", f"vr{s}", "type", "veth", "peer", "name", f"seg{s}",
           "netns", router)  # fmt: skip
        ip_batch(hub, [f"link set vr{s} master br{s}", f"link set vr{s} up"])
        lines = [f"link set seg{s} up", f"addr add 198.18.{s}.254/24 dev seg{s}"]
        if ipv6:
            lines.append(f"addr add 2001:db8:0:{s}::fe/64 dev seg{s} nodad")
        ip_batch(router, lines)
    _forwarding(router)


def make_host(
    hub: str, netns: str, index: int, segment: int, segments: int, ipv6: bool
) -> tuple[str, str]:
    """Create host namespace ``netns`` with ``eth0`` on bridge ``br<segment>``."""
    addr, addr6 = host_addresses(index, segment)
    hub_veth = f"vh{index}"
    netns_add(netns)
    ip("-n", hub, "link", "add", hub_veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    ip_batch(hub, [f"link set {hub_veth} master br{segment}", f"link set {hub_veth} up"])
    lines = ["link set eth0 up", f"addr add {addr}/24 dev eth0"]
    if ipv6:
        lines.append(f"addr add {addr6}/64 dev eth0 nodad")
    if segments > 1:
        lines.append(f"route add default via 198.18.{segment}.254")
        if ipv6:
            lines.append(f"route add default via 2001:db8:0:{segment}::fe")
    ip_batch(netns, lines)
    _forwarding(netns)
    return addr, hub_veth


def make_pod(
    host_ns: str,
    pod_ns: str,
    subnet: str,
    mtu: int,
    subnet6: str | None = None,
    *,
    bridge: str = "cni0",
    veth: str = "veth0",
) -> tuple[str, str | None]:
    """(Re)build ``bridge`` and the pod from FLANNEL_SUBNET (``10.244.5.1/24``); returns
    the pod's addresses. Several networks: one bridge, veth and pod namespace each."""
    ns_run(host_ns, ["ip", "link", "del", bridge], check=False)
    ns_run(host_ns, ["ip", "link", "del", veth], check=False)
    gw = IPv4Interface(subnet)
    pod = IPv4Interface((int(gw.ip) + 1, gw.network.prefixlen))
    host_lines = [
        f"link add {bridge} type bridge",
        f"link set {bridge} mtu {mtu} up",
        f"addr add {gw} dev {bridge}",
        f"link add {veth} mtu {mtu} type veth peer name eth0 netns {pod_ns}",
        f"link set {veth} master {bridge}",
        f"link set {veth} up",
    ]
    pod_lines = ["link set lo up", f"link set eth0 mtu {mtu} up", f"addr add {pod} dev eth0",
                 f"route add default via {gw.ip}"]  # fmt: skip
    pod6: IPv6Interface | None = None
    if subnet6:
        gw6 = IPv6Interface(subnet6)
        pod6 = IPv6Interface((int(gw6.ip) + 1, gw6.network.prefixlen))
        host_lines.insert(3, f"addr add {gw6} dev {bridge} nodad")
        pod_lines += [f"addr add {pod6} dev eth0 nodad", f"route add default via {gw6.ip}"]
    ip_batch(host_ns, host_lines)
    ip_batch(pod_ns, pod_lines)
    return str(pod.ip), (str(pod6.ip) if pod6 is not None else None)
