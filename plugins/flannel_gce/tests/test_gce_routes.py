"""gce against the fake Compute API and fake metadata servers, all on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from gce_fakes import FakeCompute, FakeMetadata

import flannel_gce
from flannel.backend import BackendContext, BackendError, ExternalInterface
from flannel.config import NetworkConfig
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel_gce.compute import link_key
from flannel_gce.network import GceNetwork
from flannel_gce.routes import route_name

NETWORK = IPv4Network("10.244.0.0/16")
ZONE = "europe-west1-b"
WRITES = {"routes.insert", "routes.delete"}


@dataclass
class Host:
    name: str
    address: IPv4Address
    subnet: IPv4Network
    metadata: FakeMetadata
    link: str
    lease_calls: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def hosts(compute: FakeCompute) -> Iterator[list[Host]]:
    compute.add_network("default")
    made: list[Host] = []
    try:
        for n in (1, 2):
            name = f"node-{n}"
            inst = compute.add_instance(ZONE, name)
            made.append(
                Host(
                    name=name,
                    address=IPv4Address(f"198.18.1.{n + 10}"),
                    subnet=IPv4Network(f"10.244.{n}.0/24"),
                    metadata=FakeMetadata(compute, ZONE, name, "default"),
                    link=inst["selfLink"],
                )
            )
        yield made
    finally:
        for host in made:
            host.metadata.close()


def context(host: Host, compute: FakeCompute, **options: Any) -> BackendContext:
    backend = {
        "Type": "gce",
        "MetadataEndpoint": host.metadata.url,
        "ComputeEndpoint": compute.url,
        "CheckInterval": 0,
        **options,
    }
    config = NetworkConfig(
        network=NETWORK,
        subnet_len=24,
        subnet_min=None,
        subnet_max=None,
        backend_type="gce",
        backend=backend,
    )

    async def acquire_lease(**kwargs: Any) -> Lease:
        host.lease_calls.append(kwargs)
        return Lease(host.subnet, LeaseAttrs(public_ip=host.address, backend_type=""))

    return BackendContext(
        backend_type="gce",
        network=config,
        ext_iface=ExternalInterface(name="ens4", index=2, mtu=1460, iface_addr=host.address),
        acquire_lease=acquire_lease,
        metrics=Metrics(),
    )


async def register(host: Host, compute: FakeCompute, **options: Any) -> GceNetwork:
    coro = flannel_gce.register_network(backend_type="gce", ctx=context(host, compute, **options))
    assert coro is not None
    network = await coro
    assert isinstance(network, GceNetwork)
    return network


def next_hops(compute: FakeCompute) -> dict[str, tuple[str, str]]:
    """Route name -> (destination, next-hop instance) at the fake."""
    return {n: (r["destRange"], link_key(r["nextHopInstance"])) for n, r in compute.routes.items()}


def start(network: GceNetwork) -> asyncio.Task[None]:
    coro = flannel_gce.run(network=network)
    assert coro is not None
    return asyncio.ensure_future(coro)


async def stop(network: GceNetwork, task: asyncio.Task[None], reason: str | None) -> None:
    if reason is not None:
        network.stop_reason = reason
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def writes(compute: FakeCompute) -> dict[str, int]:
    return {kind: n for kind, n in compute.counts().items() if kind in WRITES}


async def test_two_hosts_each_route_their_subnet_to_themselves(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, b = hosts
    net_a = await register(a, compute)
    await register(b, compute)

    assert next_hops(compute) == {
        "flannel-10-244-1-0-24": ("10.244.1.0/24", link_key(a.link)),
        "flannel-10-244-2-0-24": ("10.244.2.0/24", link_key(b.link)),
    }
    route = compute.routes["flannel-10-244-1-0-24"]
    assert route["priority"] == 1000 and route["network"] == compute.networks["default"]["selfLink"]
    assert a.lease_calls == [{"backend_type": ""}] and net_a.mtu == 1460
    assert writes(compute) == {"routes.insert": 2}
    # Every insert was waited for (the fake applies it on the 2nd poll of its operation).
    assert compute.counts()["globalOperations.get"] == 4
    calls = net_a.ctx.metrics.counter("cloud_api_calls_total")
    assert calls.get(backend="gce", op="routes.insert") == 1


async def test_released_lease_withdraws_only_that_route(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, b = hosts
    net_a = await register(a, compute)
    await register(b, compute)
    task = start(net_a)
    await asyncio.sleep(0)
    await stop(net_a, task, reason="lease_lost")
    assert list(next_hops(compute)) == ["flannel-10-244-2-0-24"]


async def test_plain_shutdown_keeps_the_route_and_restart_makes_no_changes(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, _ = hosts
    net_a = await register(a, compute)
    task = start(net_a)
    await asyncio.sleep(0)
    await stop(net_a, task, reason=None)
    assert list(next_hops(compute)) == ["flannel-10-244-1-0-24"]

    compute.clear()
    await register(a, compute)
    assert next_hops(compute) == {"flannel-10-244-1-0-24": ("10.244.1.0/24", link_key(a.link))}
    counts = compute.counts()
    assert writes(compute) == {} and "globalOperations.get" not in counts, counts
    assert set(counts) == {"networks.get", "instances.get", "routes.list", "routes.get"}


async def test_delete_route_on_shutdown_option(compute: FakeCompute, hosts: list[Host]) -> None:
    a, _ = hosts
    net_a = await register(a, compute, DeleteRouteOnShutdown=True)
    task = start(net_a)
    await asyncio.sleep(0)
    await stop(net_a, task, reason=None)
    assert compute.routes == {}


async def test_same_named_route_pointing_elsewhere_is_replaced(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, b = hosts
    compute.routes[route_name(a.subnet)] = {
        "name": route_name(a.subnet),
        "destRange": str(a.subnet),
        "network": compute.networks["default"]["selfLink"],
        "nextHopInstance": b.link,
        "priority": 1000,
    }
    await register(a, compute)
    assert next_hops(compute) == {"flannel-10-244-1-0-24": ("10.244.1.0/24", link_key(a.link))}
    assert writes(compute) == {"routes.delete": 1, "routes.insert": 1}


async def test_stale_route_of_an_earlier_lease_is_removed(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, b = hosts
    net_link = compute.networks["default"]["selfLink"]
    for name, dest, hop in (
        ("flannel-10-244-9-0-24", "10.244.9.0/24", a.link),  # ours, earlier lease: stale
        ("flannel-10-244-8-0-24", "10.244.8.0/24", b.link),  # another host's
        ("office", "192.168.7.0/24", a.link),  # not flannel's
    ):
        compute.routes[name] = {
            "name": name,
            "destRange": dest,
            "network": net_link,
            "nextHopInstance": hop,
        }
    await register(a, compute)
    assert sorted(next_hops(compute)) == [
        "flannel-10-244-1-0-24",
        "flannel-10-244-8-0-24",
        "office",
    ]


async def test_route_list_is_paged(
    compute: FakeCompute, hosts: list[Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = hosts
    net_link = compute.networks["default"]["selfLink"]
    for n in range(30, 37):
        name = f"flannel-10-244-{n}-0-24"
        compute.routes[name] = {
            "name": name,
            "destRange": f"10.244.{n}.0/24",
            "network": net_link,
            "nextHopInstance": a.link,
        }
    monkeypatch.setattr("flannel_gce.compute.PAGE_SIZE", 3)
    await register(a, compute)
    assert list(next_hops(compute)) == ["flannel-10-244-1-0-24"]
    assert compute.counts()["routes.list"] == 3


async def test_quota_exceeded_is_explained(compute: FakeCompute, hosts: list[Host]) -> None:
    a, _ = hosts
    compute.route_quota = 0
    with pytest.raises(
        BackendError, match=r"out of route quota \(QUOTA_EXCEEDED: Quota 'ROUTES' exceeded"
    ):
        await register(a, compute)


async def test_permission_denied_is_explained(compute: FakeCompute, hosts: list[Host]) -> None:
    a, _ = hosts
    compute.denied.add("routes.insert")
    with pytest.raises(
        BackendError, match=r"^gce: insert route flannel-10-244-1-0-24 was denied \(HTTP 403"
    ):
        await register(a, compute)


async def test_no_metadata_server_fails_clearly_before_any_lease(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, _ = hosts
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/computeMetadata/v1"
    coro = flannel_gce.register_network(
        backend_type="gce", ctx=context(a, compute, MetadataEndpoint=dead)
    )
    assert coro is not None
    with pytest.raises(BackendError) as info:
        await coro
    message = str(info.value)
    assert message.startswith(f"gce: no GCE metadata server answered at {dead}")
    assert "Metadata-Flavor: Google" in message and "FLANNEL_GCE_METADATA_URL" in message
    assert a.lease_calls == [] and compute.requests == []


async def test_metadata_env_variable_and_flavor_check(
    compute: FakeCompute, hosts: list[Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = hosts
    monkeypatch.setenv("FLANNEL_GCE_METADATA_URL", a.metadata.url)
    ctx = context(a, compute)
    del ctx.network.backend["MetadataEndpoint"]
    coro = flannel_gce.register_network(backend_type="gce", ctx=ctx)
    assert coro is not None
    await coro
    assert route_name(a.subnet) in compute.routes
    # A server that is not a GCE metadata server (no Metadata-Flavor answer) is refused.
    monkeypatch.setenv("FLANNEL_GCE_METADATA_URL", compute.url)
    coro = flannel_gce.register_network(backend_type="gce", ctx=ctx)
    assert coro is not None
    with pytest.raises(BackendError, match=r"did not answer like a GCE metadata server"):
        await coro


def test_type_and_events() -> None:
    assert list(flannel_gce.backend_types()) == ["gce"]
    assert flannel_gce.register_network(backend_type="aws-vpc", ctx=None) is None  # type: ignore[arg-type]
    from flannel.backend import BackendNetwork
    from flannel.events import Event

    peer = Lease(IPv4Network("10.244.9.0/24"), LeaseAttrs(public_ip=IPv4Address("198.18.1.99")))
    network = BackendNetwork("gce", peer, 1500, ctx=None)  # type: ignore[arg-type]
    assert flannel_gce.handle_events(network=network, events=[Event.added(peer)]) is None
    assert flannel_gce.run(network=network) is None  # not one of ours: nothing to run


async def test_calls_carry_the_metadata_server_s_token(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, _ = hosts
    await register(a, compute)  # every call was accepted: each carried an issued token
    assert "/instance/service-accounts/default/token" in a.metadata.requests

    class Forgetful(set[str]):
        def add(self, token: str) -> None:
            pass  # the Compute API never learns the tokens: every call is unauthenticated

    compute.tokens = Forgetful()
    with pytest.raises(
        BackendError, match=r"^gce: get network default was not authenticated \(HTTP 401"
    ):
        await register(a, compute)


async def test_same_named_route_of_another_vpc_network_is_left_alone(
    compute: FakeCompute, hosts: list[Host]
) -> None:
    a, b = hosts
    other = compute.add_network("staging")
    name = route_name(a.subnet)
    compute.routes[name] = {
        "name": name,
        "destRange": str(a.subnet),
        "network": other["selfLink"],
        "nextHopInstance": b.link,
    }
    with pytest.raises(
        BackendError,
        match=r"already exists for network projects/flannel-test/global/networks/staging",
    ):
        await register(a, compute)
    assert compute.routes[name]["network"] == other["selfLink"]
    assert writes(compute) == {}
