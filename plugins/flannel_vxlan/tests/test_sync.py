"""flannel_vxlan.sync.Programmer against a real kernel: the incremental event path keeps the
kernel exact without any dump, and the raw-bytes reconcile repairs drift, then goes quiet."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import ip_address, ip_network

import pytest
from vxhelpers import in_netns, make_hosts

from flannel.netlink._rtnl import RtnlSocket
from flannel.netlink.neigh import FdbEntry, NeighEntry, NeighTable
from flannel.netlink.routes import RTPROT_FLANNEL, RouteTable
from flannel.testing.netns import Netns
from flannel_vxlan.plan import PeerPlan, PeerTarget, vxlan_plan
from flannel_vxlan.sync import Programmer

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def plan(i: int, idx: int, mac_byte: int = 0) -> PeerPlan:
    target = PeerTarget(
        f"10.100.{i}.0-24",
        ip_network(f"10.100.{i}.0/24"),
        ip_address(f"198.18.1.{i}"),
        f"0a:{mac_byte:02x}:00:00:00:{i:02x}",
    )
    return vxlan_plan(target, idx)


def kernel(table: NeighTable, routes: RtnlSocket, idx: int) -> tuple[set[str], ...]:
    neighs = {f"{e.ip} {e.mac}" for e in table.dump_neigh(idx)}
    fdbs = {f"{e.mac} {e.dst}" for e in table.dump_fdb(idx)}
    dsts = {str(r.dst) for r in routes.dump_routes(socket.AF_INET, 254, RTPROT_FLANNEL)}
    return neighs, fdbs, dsts


def expected(plans: dict[int, PeerPlan]) -> tuple[set[str], ...]:
    ps = plans.values()
    return (
        {f"{n.ip} {n.mac}" for p in ps for n in p.neighs},
        {f"{f.mac} {f.dst}" for p in ps for f in p.fdbs},
        {str(r.dst) for p in ps for r in p.routes},
    )


def test_events_incremental_and_reconcile_repairs_then_is_quiet(
    netns_factory: Callable[[str], Netns],
) -> None:
    a, _b = make_hosts(netns_factory)
    a.ns.sh(
        "ip link add flannel.1 type vxlan id 1 local 198.18.0.1 dev ext0 dstport 8472 "
        "nolearning && ip link set flannel.1 up && ip addr add 10.100.0.0/32 dev flannel.1"
    )
    idx = a.ifindex("flannel.1")
    # Another network's route (same protocol, outside our scope) must survive everything.
    a.ns.sh(f"ip route add 10.200.1.0/24 via 198.18.0.9 dev ext0 proto {RTPROT_FLANNEL}")

    async def scenario() -> None:
        neigh = NeighTable()
        check = RtnlSocket()
        prog = Programmer(neigh, RouteTable(scope=[ip_network("10.100.0.0/16")]), {4: idx})
        try:
            plans = {i: plan(i, idx) for i in range(1, 201)}
            first = prog.replace_all(plans.values())
            assert not first.failed and len(first.programmed) == 200
            assert kernel(neigh, check, idx)[:2] == expected(plans)[:2]
            # Events: 5 removed, 5 added, 5 with a new VtepMAC; no reconcile in between.
            removed = [plans.pop(i).plan_id for i in range(1, 6)]
            changed = {i: plan(i, idx) for i in range(201, 206)}
            changed |= {i: plan(i, idx, mac_byte=1) for i in range(10, 15)}
            plans |= changed
            report = prog.apply_changes(changed.values(), removed)
            assert not report.failed and len(report.programmed) == 10
            assert report.routes.unchanged == 5  # changed MAC, same route: not rewritten
            have = kernel(neigh, check, idx)
            assert have[:2] == expected(plans)[:2]
            assert have[2] == expected(plans)[2] | {"10.200.1.0/24"}
            # Drift behind our back: a lost neighbour and route, a stray FDB entry.
            a.ns.sh(
                "ip neigh del 10.100.50.0 dev flannel.1 && ip route del 10.100.60.0/24 && "
                "bridge fdb append 0a:09:00:00:00:01 dev flannel.1 dst 198.18.9.1 self"
            )
            fixed = prog.reconcile()
            assert [str(e) for e in fixed.removed] == [
                str(FdbEntry(idx, "0a:09:00:00:00:01", ip_address("198.18.9.1")))
            ]
            assert [p.key for p in fixed.programmed] == ["10.100.50.0-24"]
            assert [str(r.dst) for r in fixed.routes.replaced] == ["10.100.60.0/24"]
            have = kernel(neigh, check, idx)
            assert have[:2] == expected(plans)[:2]
            assert have[2] == expected(plans)[2] | {"10.200.1.0/24"}
            quiet = prog.reconcile()
            assert quiet.writes == 0
            wanted: list[NeighEntry | FdbEntry] = [n for p in prog.plans.values() for n in p.neighs]
            wanted += [f for p in prog.plans.values() for f in p.fdbs]
            snap = neigh.snapshot({idx: socket.AF_INET}, wanted)
            assert (snap.missing, snap.foreign, snap.decoded) == ([], [], 0)
        finally:
            neigh.close()
            check.close()
            prog.routes.close()

    in_netns(a.ns, scenario)
