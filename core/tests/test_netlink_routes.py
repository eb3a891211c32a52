"""flannel.netlink.routes against the real kernel, inside throwaway network namespaces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_network

import pytest

from flannel.netlink.routes import RTPROT_FLANNEL, Route, RouteTable, connected_networks
from flannel.testing.netns import Netns

pytestmark = pytest.mark.netns


@pytest.fixture
def link(netns_factory: Callable[[str], Netns]) -> Iterator[tuple[Netns, int]]:
    ns = netns_factory("routes")
    ns.sh(
        "ip link add ext0 type veth peer name ext1 && ip link set ext0 up && ip link set ext1 up"
        " && ip addr add 198.18.0.1/24 dev ext0 && ip -6 addr add 2001:db8::1/64 dev ext0 nodad"
    )
    yield ns, int(ns.sh("cat /sys/class/net/ext0/ifindex"))


def ip_routes(ns: Netns, family: str = "-4") -> list[str]:
    return [line.strip() for line in ns.sh(f"ip {family} route show table main").splitlines()]


def peer_route(i: int, oif: int, gw: str = "198.18.0.2") -> Route:
    return Route(ip_network(f"10.244.{i}.0/24"), ip_address(gw), oif)


def test_batch_programs_routes_and_second_sync_writes_nothing(link: tuple[Netns, int]) -> None:
    ns, oif = link
    with RouteTable(netns=ns.name) as table:
        table.want_only(peer_route(i, oif) for i in range(1, 201))
        table.want(Route(ip_network("fd00:0:0:5::/64"), ip_address("2001:db8::5"), oif))
        report = table.sync()
        assert len(report.replaced) == 201 and not report.errors and not report.deleted
        again = table.sync()
        assert again.writes == 0 and again.unchanged == 201
    v4 = ip_routes(ns)
    assert f"10.244.7.0/24 via 198.18.0.2 dev ext0 proto {RTPROT_FLANNEL}" in v4
    assert sum(f"proto {RTPROT_FLANNEL}" in line for line in v4) == 200
    assert any(
        line.startswith(f"fd00:0:0:5::/64 via 2001:db8::5 dev ext0 proto {RTPROT_FLANNEL}")
        for line in ip_routes(ns, "-6")
    )


def test_same_destination_new_gateway_is_replaced(link: tuple[Netns, int]) -> None:
    ns, oif = link
    with RouteTable(netns=ns.name) as table:
        table.want(peer_route(3, oif, "198.18.0.2"))
        table.sync()
        table.want(peer_route(3, oif, "198.18.0.3"))
        report = table.sync()
    assert [str(r.gateway) for r in report.replaced] == ["198.18.0.3"]
    matching = [line for line in ip_routes(ns) if line.startswith("10.244.3.0/24")]
    assert matching == [f"10.244.3.0/24 via 198.18.0.3 dev ext0 proto {RTPROT_FLANNEL}"]


def test_refused_route_is_reported_and_the_rest_of_the_batch_lands(
    link: tuple[Netns, int],
) -> None:
    ns, oif = link
    with RouteTable(netns=ns.name) as table:
        table.want(peer_route(1, oif))
        table.want(Route(ip_network("10.244.2.0/24"), ip_address("192.0.2.9"), oif))  # off-link
        table.want(peer_route(3, oif))
        report = table.sync()
    assert len(report.errors) == 1
    error = report.errors[0]
    assert error.route.dst == ip_network("10.244.2.0/24") and error.op == "replace"
    assert error.errno == 101  # ENETUNREACH
    assert "10.244.2.0/24 via 192.0.2.9" in str(error)
    assert {str(r.dst) for r in report.replaced} == {"10.244.1.0/24", "10.244.3.0/24"}


def test_prune_deletes_only_owned_routes(link: tuple[Netns, int]) -> None:
    ns, oif = link
    ns.sh("ip route add 10.99.0.0/24 via 198.18.0.7 dev ext0 proto static")
    with RouteTable(netns=ns.name) as table:
        table.want_only(peer_route(i, oif) for i in (1, 2, 3))
        table.sync()
        table.forget(ip_network("10.244.2.0/24"))
        kept = table.sync(prune=False)
        assert kept.writes == 0
        assert any(line.startswith("10.244.2.0/24") for line in ip_routes(ns))
        pruned = table.sync(prune=True)
    assert [str(r.dst) for r in pruned.deleted] == ["10.244.2.0/24"]
    routes = ip_routes(ns)
    assert not any(line.startswith("10.244.2.0/24") for line in routes)
    assert "10.99.0.0/24 via 198.18.0.7 dev ext0 proto static" in routes


def test_routes_changed_by_hand_are_restored(link: tuple[Netns, int]) -> None:
    ns, oif = link
    with RouteTable(netns=ns.name) as table:
        table.want_only(peer_route(i, oif) for i in (1, 2))
        table.sync()
        ns.sh("ip route del 10.244.1.0/24")
        ns.sh("ip route replace 10.244.2.0/24 via 198.18.0.9 dev ext0 proto static")
        report = table.sync()
        assert {str(r.dst) for r in report.replaced} == {"10.244.1.0/24", "10.244.2.0/24"}
        assert table.sync().writes == 0
    routes = ip_routes(ns)
    assert f"10.244.2.0/24 via 198.18.0.2 dev ext0 proto {RTPROT_FLANNEL}" in routes
    assert f"10.244.1.0/24 via 198.18.0.2 dev ext0 proto {RTPROT_FLANNEL}" in routes


def test_a_new_table_finds_and_prunes_routes_left_by_a_previous_run(
    link: tuple[Netns, int],
) -> None:
    ns, oif = link
    with RouteTable(netns=ns.name) as first:
        first.want_only(peer_route(i, oif) for i in (1, 2, 3))
        first.sync()
    with RouteTable(netns=ns.name) as second:
        assert {str(r.dst) for r in second.owned()} == {f"10.244.{i}.0/24" for i in (1, 2, 3)}
        second.want(peer_route(2, oif))
        report = second.sync(prune=True)
    assert {str(r.dst) for r in report.deleted} == {"10.244.1.0/24", "10.244.3.0/24"}
    assert report.unchanged == 1


def test_connected_networks_lists_the_interface_prefixes(link: tuple[Netns, int]) -> None:
    ns, oif = link
    assert set(connected_networks(oif, netns=ns.name)) == {
        ip_network("198.18.0.0/24"),
        ip_network("2001:db8::/64"),
    }


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="another address family"):
        Route(ip_network("10.0.0.0/24"), ip_address("2001:db8::1"))
    with pytest.raises(ValueError, match=r"route protocol must be 5\.\.255"):
        RouteTable(protocol=2)
    with pytest.raises(FileNotFoundError, match="no-such-ns-flannel"):
        RouteTable(netns="no-such-ns-flannel")


def test_tables_with_different_scopes_never_delete_each_others_routes(
    link: tuple[Netns, int],
) -> None:
    """Two networks in one namespace (issue 10): both mark routes with protocol 75."""
    ns, oif = link
    a_route = Route(ip_network("10.244.1.0/24"), ip_address("198.18.0.2"), oif)
    a6_route = Route(ip_network("fd00:a::/64"), ip_address("2001:db8::2"), oif)
    b_route = Route(ip_network("10.245.1.0/24"), ip_address("198.18.0.3"), oif)
    a_scope = [ip_network("10.244.0.0/16"), ip_network("fd00:a::/48")]
    with (
        RouteTable(netns=ns.name, scope=a_scope) as a,
        RouteTable(netns=ns.name, scope=[ip_network("10.245.0.0/16")]) as b,
    ):
        a.want_only([a_route, a6_route])
        b.want_only([b_route])
        assert not a.sync().errors and not b.sync().errors
        for _ in range(2):  # each prunes with the other's routes present
            assert a.sync(prune=True).deleted == [] and b.sync(prune=True).deleted == []
        assert {r.dst for r in a.owned()} == {a_route.dst, a6_route.dst}
        assert [r.dst for r in b.owned()] == [b_route.dst]
        # A stale route inside a scope is still pruned by its owner only.
        ns.sh(f"ip route add 10.245.9.0/24 via 198.18.0.4 dev ext0 proto {RTPROT_FLANNEL}")
        assert a.sync(prune=True).deleted == []
        assert [str(r.dst) for r in b.sync(prune=True).deleted] == ["10.245.9.0/24"]
        # An event-path forget touches only the named route.
        a.apply(forget=[a_route.dst])
    v4 = ip_routes(ns)
    assert not any(line.startswith("10.244.1.0/24") for line in v4)
    assert any(line.startswith("10.245.1.0/24 via 198.18.0.3") for line in v4)
    assert any(line.startswith("fd00:a::/64 via 2001:db8::2") for line in ip_routes(ns, "-6"))


def test_unscoped_table_prunes_every_owned_route(link: tuple[Netns, int]) -> None:
    ns, oif = link
    ns.sh(f"ip route add 10.245.9.0/24 via 198.18.0.4 dev ext0 proto {RTPROT_FLANNEL}")
    with RouteTable(netns=ns.name) as table:
        table.want(peer_route(1, oif))
        report = table.sync(prune=True)
    assert [str(r.dst) for r in report.deleted] == ["10.245.9.0/24"]


def test_empty_scope_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="route scope is empty"):
        RouteTable(scope=[])
