"""The periodic reconcile dumps only after the kernel reported a change that concerns us
(or on every ``full_every``-th pass); hand-made drift is still repaired on the next pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from vxhelpers import Host, in_netns, make_hosts

import flannel_vxlan
from flannel.backend import BackendNetwork
from flannel.events import Event
from flannel.netlink._rtnl import RtnlSocket
from flannel.testing.netns import Netns
from flannel_vxlan.network import VxlanNetwork

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def register(host: Host) -> VxlanNetwork:
    async def go() -> BackendNetwork:
        return await flannel_vxlan.register_network(backend_type="vxlan", ctx=host.ctx({}))

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


class DumpCounter:
    """Counts the real netlink dumps of a network's sockets (neighbours, FDB, routes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, network: VxlanNetwork) -> None:
        self.count = 0
        route_sock = network.kernel.routes._sock  # counting, not replacing
        for sock in (network.kernel.neigh.sock, route_sock):
            monkeypatch.setattr(sock, "dump", self._wrap(sock))

    def _wrap(self, sock: RtnlSocket) -> Callable[..., list[bytes]]:
        real = sock.dump

        def dump(*args: Any) -> list[bytes]:
            self.count += 1
            return real(*args)

        return dump


@pytest.fixture
def pair(netns_factory: Callable[[str], Netns]) -> tuple[Host, VxlanNetwork, str]:
    a, b = make_hosts(netns_factory)
    net_a, net_b = register(a), register(b)
    mac_b = net_b.devices[4].mac
    events(a, net_a, [Event.added(b.lease({"VNI": 1, "VtepMAC": mac_b}))])
    return a, net_a, mac_b


def intact(a: Host, mac_b: str) -> bool:
    return (
        a.neighs() == {("10.244.2.0", mac_b)}
        and a.fdb() == {(mac_b, "198.18.0.2")}
        and a.routes() == {("10.244.2.0/24", "10.244.2.0")}
    )


def quiet_pass(a: Host, net: VxlanNetwork, dumps: DumpCounter) -> bool:
    """One reconcile that writes nothing; True when it also dumped nothing."""
    before = dumps.count
    assert reconcile(a, net) == 0
    return dumps.count == before


@pytest.mark.parametrize(
    "change",
    [
        "ip neigh del 10.244.2.0 dev flannel.1",
        "bridge fdb del {mac} dev flannel.1 dst 198.18.0.2 self",
        "ip route del 10.244.2.0/24",
        "ip link set flannel.1 down && ip link set flannel.1 up",  # routes go unannounced
    ],
)
def test_hand_change_marks_dirty_and_next_pass_repairs(
    pair: tuple[Host, VxlanNetwork, str], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    a, net_a, mac_b = pair
    dumps = DumpCounter(monkeypatch, net_a)
    # The event's own writes were announced: one full pass, then quiet passes dump nothing.
    assert not quiet_pass(a, net_a, dumps)
    assert quiet_pass(a, net_a, dumps) and quiet_pass(a, net_a, dumps)
    full = net_a.kernel.full_passes

    a.ns.sh(change.format(mac=mac_b))
    assert not intact(a, mac_b)
    before = dumps.count
    assert reconcile(a, net_a) > 0
    assert dumps.count > before and net_a.kernel.full_passes == full + 1
    assert intact(a, mac_b)
    assert not quiet_pass(a, net_a, dumps)  # our repair was announced too
    assert quiet_pass(a, net_a, dumps)


def test_unrelated_changes_do_not_dump(
    pair: tuple[Host, VxlanNetwork, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, net_a, _mac_b = pair
    dumps = DumpCounter(monkeypatch, net_a)
    quiet_pass(a, net_a, dumps)
    a.ns.sh(
        "ip neigh add 198.18.0.9 lladdr 0a:00:00:00:00:09 dev ext0 nud permanent"
        " && ip route add 198.19.0.0/24 via 198.18.0.254"
        " && ip link add pod0 type veth peer name pod1 && ip link set pod0 up"
    )
    assert quiet_pass(a, net_a, dumps)
    assert quiet_pass(a, net_a, dumps)


def test_safety_net_dumps_every_nth_pass(
    pair: tuple[Host, VxlanNetwork, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, net_a, _mac_b = pair
    dumps = DumpCounter(monkeypatch, net_a)
    net_a.kernel.full_every = 3
    quiet_pass(a, net_a, dumps)  # full (our own writes)
    assert [quiet_pass(a, net_a, dumps) for _ in range(6)] == [True, True, False] * 2
