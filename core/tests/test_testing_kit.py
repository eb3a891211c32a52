"""flannel.testing's helpers for backend authors do what they promise (and can fail)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flannel.events import EventType
from flannel.testing.events import EventSource, peer_lease
from flannel.testing.kernel import assert_fdb, assert_neighbours, assert_routes
from flannel.testing.netns import Netns


def test_peer_lease_numbers_subnets_and_addresses() -> None:
    lease = peer_lease(5, backend_type="host-gw", ipv6_network="fd00:10::/48")
    assert str(lease.subnet) == "10.244.5.0/24" and str(lease.attrs.public_ip) == "198.18.0.15"
    assert str(lease.ipv6_subnet) == "fd00:10:0:5::/64"
    with pytest.raises(ValueError, match="does not fit"):
        peer_lease(300, network="10.244.0.0/24", subnet_len=26)


def test_event_source_follows_a_subnet_managers_semantics() -> None:
    peers = EventSource(backend_type="vxlan")
    added = peers.add(1, backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"})
    assert added.type is EventType.ADDED and added.lease.attrs.backend_type == "vxlan"
    peers.add(2)
    changed = peers.change(1, public_ip="198.18.1.99")
    assert str(changed.lease.attrs.public_ip) == "198.18.1.99"
    assert changed.lease.attrs.backend_data == {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"}
    removed = peers.remove(2)
    assert removed.type is EventType.REMOVED and str(removed.lease.subnet) == "10.244.2.0/24"
    assert [e.lease.key for e in peers.snapshot()] == ["10.244.1.0-24"]


def test_kernel_asserts_see_routes_neighbours_and_fdb(
    netns_factory: Callable[[str], Netns],
) -> None:
    ns = netns_factory("kit")
    ns.sh(
        "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && ip link set eth1 up"
        " && ip addr add 198.18.0.1/24 dev eth0"
        " && ip route add 10.244.7.0/24 via 198.18.0.7 proto 75"
        " && ip link add flannel.1 type vxlan id 1 local 198.18.0.1 dev eth0 nolearning"
        " && ip link set flannel.1 up"
        " && ip neigh add 10.244.7.0 lladdr 0a:00:00:00:00:07 dev flannel.1 nud permanent"
        " && bridge fdb add 0a:00:00:00:00:07 dev flannel.1 dst 198.18.0.7 self permanent"
    )
    assert_routes(ns.name, {"10.244.7.0/24": "198.18.0.7"})
    assert_neighbours(ns.name, "flannel.1", {"10.244.7.0": "0a:00:00:00:00:07"})
    assert_fdb(ns.name, "flannel.1", {"0a:00:00:00:00:07": "198.18.0.7"})
    with pytest.raises(AssertionError, match="missing"):
        assert_routes(ns.name, {"10.244.7.0/24": "198.18.0.7", "10.244.8.0/24": "198.18.0.8"})
    with pytest.raises(AssertionError, match="wrong"):
        assert_fdb(ns.name, "flannel.1", {"0a:00:00:00:00:07": "198.18.0.9"})
    ns.sh("ip route del 10.244.7.0/24")
    with pytest.raises(AssertionError, match="missing"):
        assert_routes(ns.name, {"10.244.7.0/24": "198.18.0.7"})
