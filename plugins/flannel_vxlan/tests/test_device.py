"""Device-level tests: hooks called directly inside our own namespaces (real kernel)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from vxhelpers import Host, in_netns, make_hosts

import flannel_vxlan
from flannel.backend import BackendConfigError, BackendNetwork
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.testing.netns import Netns
from flannel_vxlan.network import VxlanNetwork

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def register(host: Host, backend: dict[str, Any] | None = None) -> VxlanNetwork:
    async def go() -> BackendNetwork:
        return await flannel_vxlan.register_network(
            backend_type="vxlan", ctx=host.ctx(backend or {})
        )

    network = in_netns(host.ns, go)
    assert isinstance(network, VxlanNetwork)
    return network


def events(host: Host, network: VxlanNetwork, batch: list[Event]) -> None:
    async def go() -> None:
        await flannel_vxlan.handle_events(network=network, events=batch)

    in_netns(host.ns, go)


def reconcile(host: Host, network: VxlanNetwork) -> int:
    async def go() -> int:
        report = await network.reconcile()
        assert report is not None
        return report.writes

    return in_netns(host.ns, go)


def peer_lease(peer: Host, network: VxlanNetwork) -> Lease:
    return peer.lease({"VNI": 1, "VtepMAC": network.devices[4].mac})


def link(host: Host, name: str = "flannel.1") -> dict[str, Any]:
    rows = host.json(f"ip -j -d link show {name}")
    assert len(rows) == 1
    return rows[0]


def test_device_created_and_lease_data(netns_factory: Callable[[str], Netns]) -> None:
    a, _b = make_hosts(netns_factory)
    net = register(a)
    info = link(a)
    data = info["linkinfo"]["info_data"]
    assert info["linkinfo"]["info_kind"] == "vxlan"
    assert data["id"] == 1 and data["local"] == "198.18.0.1" and data["port"] == 8472
    assert data["link"] == "ext0"
    assert data["learning"] is False
    assert info["mtu"] == 1450 and "UP" in info["flags"]
    mac = info["address"]
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01, "VtepMAC must be locally administered unicast"
    assert a.acquired == [{"type": "vxlan", "data": {"VNI": 1, "VtepMAC": mac}, "v6data": None}]
    addrs = a.json("ip -j -4 addr show dev flannel.1")[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs] == [("10.244.1.0", 32)]
    assert net.mtu == 1450 and net.devices[4].mac == mac


def test_options_reach_the_device(netns_factory: Callable[[str], Netns]) -> None:
    a, _b = make_hosts(netns_factory)
    net = register(a, {"VNI": 70000, "Port": 4789, "Learning": True, "GBP": True, "MTU": 1400})
    info = link(a, "flannel.70000")
    data = info["linkinfo"]["info_data"]
    assert data["id"] == 70000 and data["port"] == 4789 and data["learning"] is True
    assert data.get("gbp") is True
    assert info["mtu"] == 1400 and net.mtu == 1400
    assert a.acquired[0]["data"] == {"VNI": 70000, "VtepMAC": info["address"]}


def test_bad_option_is_a_config_error(netns_factory: Callable[[str], Netns]) -> None:
    a, _b = make_hosts(netns_factory)
    with pytest.raises(BackendConfigError, match=r"Backend\.VNI.*'x'"):
        register(a, {"VNI": "x"})
    assert not a.json("ip -j link show type vxlan")


def test_reuse_keeps_mac_and_removes_stale_addresses(netns_factory: Callable[[str], Netns]) -> None:
    a, _b = make_hosts(netns_factory)
    first = register(a)
    a.ns.sh("ip addr add 10.244.77.0/32 dev flannel.1 && ip addr add 192.0.2.5/32 dev flannel.1")
    second = register(a)
    assert second.devices[4].mac == first.devices[4].mac
    assert second.devices[4].index == first.devices[4].index
    assert not second.devices[4].created
    addrs = {x["local"] for x in a.json("ip -j -4 addr show dev flannel.1")[0]["addr_info"]}
    assert addrs == {"10.244.1.0", "192.0.2.5"}, "only addresses inside the network go"


def test_incompatible_device_is_recreated(netns_factory: Callable[[str], Netns]) -> None:
    a, _b = make_hosts(netns_factory)
    a.ns.sh("ip link add flannel.1 type vxlan id 1 local 198.18.0.1 dev ext0 dstport 4789")
    old = link(a)
    net = register(a)
    new = link(a)
    assert new["linkinfo"]["info_data"]["port"] == 8472
    assert new["ifindex"] != old["ifindex"]
    assert net.devices[4].created


def _pair(a: Host, b: Host) -> tuple[VxlanNetwork, VxlanNetwork]:
    net_a, net_b = register(a), register(b)
    events(a, net_a, [Event.added(peer_lease(b, net_b))])
    events(b, net_b, [Event.added(peer_lease(a, net_a))])
    return net_a, net_b


def ping(host: Host, dst: str) -> bool:
    done = host.ns.run(["ping", "-c", "1", "-W", "2", dst], check=False)
    return done.returncode == 0


def test_peer_added_programs_exactly_three_entries_and_traffic_flows(
    netns_factory: Callable[[str], Netns],
) -> None:
    a, b = make_hosts(netns_factory)
    net_a, net_b = _pair(a, b)
    mac_b = net_b.devices[4].mac
    assert a.neighs() == {("10.244.2.0", mac_b)}
    assert a.fdb() == {(mac_b, "198.18.0.2")}
    assert a.routes() == {("10.244.2.0/24", "10.244.2.0")}
    route = a.json("ip -j route show 10.244.2.0/24")[0]
    assert "onlink" in route["flags"]
    assert ping(a, "10.244.2.0") and ping(b, "10.244.1.0")
    # Nothing changed: the reconcile pass writes nothing.
    assert reconcile(a, net_a) == 0

    events(a, net_a, [Event.removed(peer_lease(b, net_b))])
    assert a.neighs() == set() and a.fdb() == set() and a.routes() == set()
    assert not ping(a, "10.244.2.0")


def test_route_failure_rolls_back_neigh_and_fdb(
    netns_factory: Callable[[str], Netns], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make_hosts(netns_factory)
    net_a = register(a)
    bad = Lease(
        subnet=IPv4Network("224.0.0.0/24"),  # the kernel refuses a multicast gateway
        attrs=LeaseAttrs(
            public_ip=IPv4Address("198.18.0.3"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:03"},
        ),
    )
    good = b.lease({"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"})
    with caplog.at_level(logging.ERROR, logger="flannel.vxlan"):
        events(a, net_a, [Event.added(bad), Event.added(good)])
    assert a.neighs() == {("10.244.2.0", "0a:00:00:00:00:02")}
    assert a.fdb() == {("0a:00:00:00:00:02", "198.18.0.2")}
    assert a.routes() == {("10.244.2.0/24", "10.244.2.0")}
    assert "224.0.0.0-24" in caplog.text and "not programmed" in caplog.text
    assert net_a.kernel.pending == {("224.0.0.0-24", 4)}


def test_reconcile_restores_deleted_entries(netns_factory: Callable[[str], Netns]) -> None:
    a, b = make_hosts(netns_factory)
    net_a, net_b = _pair(a, b)
    mac_b = net_b.devices[4].mac
    a.ns.sh(
        f"ip neigh del 10.244.2.0 dev flannel.1 && "
        f"bridge fdb del {mac_b} dev flannel.1 dst 198.18.0.2 self && "
        "ip route del 10.244.2.0/24"
    )
    assert not a.neighs() and not a.fdb() and not a.routes()
    assert reconcile(a, net_a) > 0
    assert a.neighs() == {("10.244.2.0", mac_b)}
    assert a.fdb() == {(mac_b, "198.18.0.2")}
    assert a.routes() == {("10.244.2.0/24", "10.244.2.0")}
    assert ping(a, "10.244.2.0")
    assert reconcile(a, net_a) == 0


def test_restart_removes_entries_of_vanished_peers(netns_factory: Callable[[str], Netns]) -> None:
    a, b = make_hosts(netns_factory)
    net_a = register(a)
    gone = Lease(
        subnet=IPv4Network("10.244.9.0/24"),
        attrs=LeaseAttrs(
            public_ip=IPv4Address("198.18.0.9"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:09"},
        ),
    )
    stays = b.lease({"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"})
    events(a, net_a, [Event.added(gone), Event.added(stays)])
    assert len(a.neighs()) == 2 and len(a.fdb()) == 2 and len(a.routes()) == 2
    in_netns(a.ns, net_a.close)

    restarted = register(a)  # same device, so the same VtepMAC
    assert restarted.devices[4].mac == net_a.devices[4].mac
    events(a, restarted, [Event.added(stays)])
    assert a.neighs() == {("10.244.2.0", "0a:00:00:00:00:02")}
    assert a.fdb() == {("0a:00:00:00:00:02", "198.18.0.2")}
    assert a.routes() == {("10.244.2.0/24", "10.244.2.0")}


def test_changed_vtep_replaces_entries(netns_factory: Callable[[str], Netns]) -> None:
    a, b = make_hosts(netns_factory)
    net_a = register(a)
    events(a, net_a, [Event.added(b.lease({"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}))])
    moved = Lease(
        subnet=b.subnet,
        attrs=LeaseAttrs(
            public_ip=IPv4Address("198.18.0.7"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:07"},
        ),
    )
    events(a, net_a, [Event.added(moved)])
    assert a.neighs() == {("10.244.2.0", "0a:00:00:00:00:07")}
    assert a.fdb() == {("0a:00:00:00:00:07", "198.18.0.7")}
    assert a.routes() == {("10.244.2.0/24", "10.244.2.0")}
    assert reconcile(a, net_a) == 0


def test_other_backend_types_are_ignored_with_a_warning(
    netns_factory: Callable[[str], Netns], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = make_hosts(netns_factory)
    net_a = register(a)
    with caplog.at_level(logging.WARNING, logger="flannel.vxlan"):
        events(a, net_a, [Event.added(b.lease(None, backend_type="host-gw"))])
        events(a, net_a, [Event.added(b.lease({"VNI": 1}))])  # vxlan without a VtepMAC
    assert "backend type 'host-gw' is not 'vxlan'" in caplog.text
    assert "no VtepMAC" in caplog.text
    assert not a.neighs() and not a.fdb() and not a.routes()


def test_direct_routing_uses_plain_routes_on_the_segment(
    netns_factory: Callable[[str], Netns],
) -> None:
    a, b = make_hosts(netns_factory)
    a.ns.sh("ip route add 198.19.0.0/24 via 198.18.0.254")
    net_a = register(a, {"DirectRouting": True})
    far = Lease(
        subnet=IPv4Network("10.244.3.0/24"),
        attrs=LeaseAttrs(
            public_ip=IPv4Address("198.19.0.3"),
            backend_type="vxlan",
            backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:03"},
        ),
    )
    events(a, net_a, [Event.added(b.lease({"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"})),
                      Event.added(far)])  # fmt: skip
    direct = a.json("ip -j route show 10.244.2.0/24")
    assert [(r["gateway"], r["dev"]) for r in direct] == [("198.18.0.2", "ext0")]
    assert a.neighs() == {("10.244.3.0", "0a:00:00:00:00:03")}
    assert a.fdb() == {("0a:00:00:00:00:03", "198.19.0.3")}
    assert a.routes() == {("10.244.3.0/24", "10.244.3.0")}
    assert reconcile(a, net_a) == 0
    events(a, net_a, [Event.removed(b.lease(None))])
    assert a.json("ip -j route show 10.244.2.0/24") == []


def test_initial_sync_of_many_peers_is_batched(netns_factory: Callable[[str], Netns]) -> None:
    a, _b = make_hosts(netns_factory)
    net_a = register(a)
    peers = [
        Event.added(
            Lease(
                subnet=IPv4Network(f"10.244.{i // 256 + 100}.{i % 256}/32"),
                attrs=LeaseAttrs(
                    public_ip=IPv4Address(f"198.18.{i // 256 + 1}.{i % 256}"),
                    backend_type="vxlan",
                    backend_data={"VNI": 1, "VtepMAC": f"0a:00:00:00:{i // 256:02x}:{i % 256:02x}"},
                ),
            )
        )
        for i in range(2000)
    ]
    events(a, net_a, peers)
    assert len(a.neighs()) == 2000 and len(a.fdb()) == 2000 and len(a.routes()) == 2000
    assert not net_a.kernel.pending
    assert reconcile(a, net_a) == 0
