"""Dual-stack device tests: flannel-v6.<VNI> next to flannel.<VNI>, IPv6 peers programmed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from vxhelpers import Host, in_netns, make_hosts

import flannel_vxlan
from flannel.backend import BackendNetwork
from flannel.events import Event
from flannel.testing.netns import Netns
from flannel_vxlan.network import VxlanNetwork

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def register(host: Host, backend: dict[str, Any] | None = None) -> VxlanNetwork:
    async def go() -> BackendNetwork:
        ctx = host.ctx(backend or {}, ipv6=True)
        return await flannel_vxlan.register_network(backend_type="vxlan", ctx=ctx)

    network = in_netns(host.ns, go)
    assert isinstance(network, VxlanNetwork)
    return network


def lease_of(host: Host, net: VxlanNetwork) -> Any:
    return host.lease(
        {"VNI": 1, "VtepMAC": net.devices[4].mac}, {"VNI": 1, "VtepMAC": net.devices[6].mac}
    )


def test_dual_stack_devices_entries_and_pings(netns_factory: Callable[[str], Netns]) -> None:
    a, b = make_hosts(netns_factory, ipv6=True)
    net_a, net_b = register(a), register(b)
    info = a.json("ip -j -d link show flannel-v6.1")[0]
    assert info["linkinfo"]["info_data"]["local6"] == "2001:db8::1"
    assert info["mtu"] == 1430 and net_a.mtu == 1430
    assert a.ns.sh("cat /proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra").strip() == "0"
    assert a.acquired[0]["v6data"] == {"VNI": 1, "VtepMAC": net_a.devices[6].mac}
    addrs = a.json("ip -j -6 addr show dev flannel-v6.1 scope global")[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs if x] == [("fd00:10:244:1::", 128)]

    async def feed(net: VxlanNetwork, peer: Any) -> None:
        await flannel_vxlan.handle_events(network=net, events=[Event.added(peer)])

    in_netns(a.ns, lambda: feed(net_a, lease_of(b, net_b)))
    in_netns(b.ns, lambda: feed(net_b, lease_of(a, net_a)))
    mac6 = net_b.devices[6].mac
    assert a.neighs("flannel-v6.1", "-6") == {("fd00:10:244:2::", mac6)}
    assert a.fdb("flannel-v6.1") == {(mac6, "2001:db8::2")}
    assert a.routes("flannel-v6.1", "-6") == {("fd00:10:244:2::/64", "fd00:10:244:2::")}
    assert a.routes() == {("10.244.2.0/24", "10.244.2.0")}
    for host, dst in ((a, "fd00:10:244:2::"), (b, "fd00:10:244:1::"), (a, "10.244.2.0")):
        done = host.ns.run(["ping", "-c", "1", "-W", "2", dst], check=False)
        assert done.returncode == 0, f"ping {dst} from {host.ns.name}: {done.stdout}"


def test_direct_routing_removal_deletes_both_families(
    netns_factory: Callable[[str], Netns],
) -> None:
    a, b = make_hosts(netns_factory, ipv6=True)
    net_a = register(a, {"DirectRouting": True})
    mac = {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}

    async def feed(*batch: Event) -> None:
        await flannel_vxlan.handle_events(network=net_a, events=list(batch))

    def direct(family: str, dst: str) -> list[str]:
        return [r.get("gateway", "") for r in a.json(f"ip -j {family} route show {dst}")]

    in_netns(a.ns, lambda: feed(Event.added(b.lease(mac, mac))))
    assert direct("-4", "10.244.2.0/24") == ["198.18.0.2"]
    assert direct("-6", "fd00:10:244:2::/64") == ["2001:db8::2"]
    assert not a.neighs() and not a.neighs("flannel-v6.1", "-6")

    # flanneld v0.20 deletes the IPv4 direct route twice here and leaves the IPv6 one.
    in_netns(a.ns, lambda: feed(Event.removed(b.lease(mac, mac))))
    assert direct("-4", "10.244.2.0/24") == []
    assert direct("-6", "fd00:10:244:2::/64") == []
