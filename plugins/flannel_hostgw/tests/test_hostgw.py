"""host-gw hooks called directly, inside a throwaway namespace, with a local acquire_lease."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

import pytest

import flannel_hostgw
from flannel.backend import (
    BackendConfigError,
    BackendContext,
    BackendError,
    BackendNetwork,
    ExternalInterface,
)
from flannel.config import NetworkConfig
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel.netlink.routes import RTPROT_FLANNEL
from flannel.testing.netns import Netns, run_in_netns
from flannel_hostgw.network import HostGWNetwork

T = TypeVar("T")
OWN = Lease(IPv4Network("10.244.1.0/24"), LeaseAttrs(IPv4Address("198.18.0.1"), None, "host-gw"))


def peer(n: int, ip: str, backend: str = "host-gw", v6: bool = False) -> Lease:
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(IPv4Address(ip), IPv6Address(f"2001:db8::{n}") if v6 else None, backend),
        ipv6_subnet=IPv6Network(f"fd00:0:0:{n}::/64") if v6 else None,
    )


def context(
    backend: dict[str, Any] | None = None,
    index: int = 0,
    ext_addr: str = "198.18.0.1",
    own: Lease = OWN,
) -> tuple[BackendContext, list[str]]:
    calls: list[str] = []

    async def acquire_lease(
        *, backend_type: str, backend_data: Any = None, backend_v6_data: Any = None
    ) -> Lease:
        calls.append(backend_type)
        return own

    config = NetworkConfig(
        network=IPv4Network("10.244.0.0/16"), subnet_len=24, subnet_min=None, subnet_max=None,
        backend_type="host-gw", backend={"Type": "host-gw", **(backend or {})},
    )  # fmt: skip
    ext = ExternalInterface(
        "ext0", index, 1500, IPv4Address("198.18.0.1"), IPv6Address("2001:db8::1"),
        IPv4Address(ext_addr), IPv6Address("2001:db8::1"),
    )  # fmt: skip
    return BackendContext("host-gw", config, ext, acquire_lease, Metrics()), calls


@pytest.fixture
def host(netns_factory: Callable[[str], Netns]) -> Iterator[tuple[Netns, int]]:
    ns = netns_factory("hostgw")
    ns.sh(
        "ip link add ext0 type veth peer name ext1 && ip link set ext0 up && ip link set ext1 up"
        " && ip addr add 198.18.0.1/24 dev ext0 && ip -6 addr add 2001:db8::1/64 dev ext0 nodad"
    )
    yield ns, int(ns.sh("cat /sys/class/net/ext0/ifindex"))


def routes(ns: Netns) -> set[str]:
    out = ns.sh("ip route show table main; ip -6 route show table main")
    return {line.split(" metric")[0].strip() for line in out.splitlines() if "proto 75" in line}


async def register(ctx: BackendContext) -> HostGWNetwork:
    network = await flannel_hostgw.register_network(backend_type="host-gw", ctx=ctx)
    assert isinstance(network, HostGWNetwork)
    return network


def test_provides_host_gw() -> None:
    assert list(flannel_hostgw.backend_types()) == ["host-gw"]


def test_public_ip_other_than_interface_ip_is_refused() -> None:
    ctx, calls = context(ext_addr="203.0.113.9")
    with pytest.raises(BackendError, match=r"PublicIP differs from interface IP.*203\.0\.113\.9"):
        asyncio.run(register(ctx))
    assert calls == []


@pytest.mark.parametrize("value", [0, -1, "10s", True, None])
def test_bad_reconcile_interval_is_refused(value: object) -> None:
    ctx, _ = context({"ReconcileInterval": value})
    with pytest.raises(BackendConfigError, match="ReconcileInterval"):
        asyncio.run(register(ctx))


def test_peers_become_routes_replaced_and_removed(
    host: tuple[Netns, int], caplog: pytest.LogCaptureFixture
) -> None:
    ns, index = host
    own_v6 = Lease(OWN.subnet, OWN.attrs, ipv6_subnet=IPv6Network("fd00:0:0:1::/64"))
    ctx, calls = context(index=index, own=own_v6)
    caplog.set_level(logging.INFO, "flannel.hostgw")
    network: HostGWNetwork | None = None

    async def first() -> None:
        nonlocal network
        network = await register(ctx)
        assert network.mtu == 1500 and network.lease == own_v6
        await flannel_hostgw.handle_events(
            network=network,
            events=[
                Event.added(peer(2, "198.18.0.2")),
                Event.added(peer(3, "198.18.0.3", v6=True)),
                Event.added(peer(4, "192.0.2.4")),
                Event.added(peer(5, "198.18.0.5", backend="vxlan")),
            ],
        )

    run_in_netns(ns.name, first)
    assert calls == ["host-gw"]
    assert routes(ns) == {
        "10.244.2.0/24 via 198.18.0.2 dev ext0 proto 75",
        "10.244.3.0/24 via 198.18.0.3 dev ext0 proto 75",
        "fd00:0:0:3::/64 via 2001:db8::3 dev ext0 proto 75",
    }
    assert "skipping peer 10.244.4.0-24" in caplog.text and "192.0.2.4" in caplog.text
    assert "10.244.5.0-24" in caplog.text and "'vxlan'" in caplog.text
    assert network is not None
    net = network

    async def second() -> None:
        await net.handle_events(
            [Event.added(peer(2, "198.18.0.22")), Event.removed(peer(3, "198.18.0.3", v6=True))]
        )
        assert (await net.reconcile(prune=True)).writes == 0

    run_in_netns(ns.name, second)
    assert routes(ns) == {"10.244.2.0/24 via 198.18.0.22 dev ext0 proto 75"}


def test_restart_prunes_vanished_peers_only_after_first_batch(host: tuple[Netns, int]) -> None:
    ns, index = host
    ns.sh(
        f"ip route add 10.244.7.0/24 via 198.18.0.7 dev ext0 proto {RTPROT_FLANNEL}"
        f" && ip route add 10.244.8.0/24 via 198.18.0.8 dev ext0 proto {RTPROT_FLANNEL}"
    )
    ctx, _ = context(index=index)

    async def body() -> BackendNetwork:
        network = await register(ctx)
        before = await network.reconcile(prune=network.synced_once)  # what run() does early
        assert before.writes == 0
        return network

    network = run_in_netns(ns.name, body)
    assert len(routes(ns)) == 2

    async def first_batch() -> None:
        await flannel_hostgw.handle_events(
            network=network, events=[Event.added(peer(8, "198.18.0.8"))]
        )

    run_in_netns(ns.name, first_batch)
    assert routes(ns) == {"10.244.8.0/24 via 198.18.0.8 dev ext0 proto 75"}


def test_run_loop_restores_a_route_deleted_by_hand(host: tuple[Netns, int]) -> None:
    ns, index = host
    ctx, _ = context({"reconcileinterval": 0.2}, index=index)

    async def body() -> bool:
        network = await register(ctx)
        assert isinstance(network, HostGWNetwork)
        assert network.options.reconcile_interval == 0.2
        await network.handle_events([Event.added(peer(2, "198.18.0.2"))])
        task = asyncio.create_task(flannel_hostgw.run(network=network))
        try:
            await asyncio.to_thread(ns.sh, "ip route del 10.244.2.0/24")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if any(r.startswith("10.244.2.0/24") for r in routes(ns)):
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert run_in_netns(ns.name, body)
    assert routes(ns) == {"10.244.2.0/24 via 198.18.0.2 dev ext0 proto 75"}
