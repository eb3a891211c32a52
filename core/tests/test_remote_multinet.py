"""The --listen server with several networks (added and removed while it runs), the
network list long poll, and a client's lease watch across a server restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest

from flannel.etcd import EtcdClientConfig
from flannel.etcd_manager import EtcdSubnetManager
from flannel.events import EventType
from flannel.lease import LeaseAttrs
from flannel.netwatch import RemoteNetworks
from flannel.remote.client import RemoteSubnetManager
from flannel.remote.server import RemoteServer
from flannel.testing.etcd import EtcdServer

PREFIX = "/remote-multi"


def _net(cidr: str) -> str:
    return json.dumps({"Network": cidr, "Backend": {"Type": "host-gw"}})


@pytest.fixture
async def managers(etcd_server: EtcdServer) -> AsyncIterator[dict[str, EtcdSubnetManager]]:
    client = EtcdClientConfig(endpoints=(etcd_server.endpoint,))
    made = {
        "blue": EtcdSubnetManager(client, PREFIX, network_name="blue"),
        "red": EtcdSubnetManager(client, PREFIX, network_name="red"),
    }
    await made["blue"].set_config(_net("10.7.0.0/16"))
    await made["red"].set_config(_net("10.8.0.0/16"))
    yield made
    for manager in made.values():
        await manager.close()


async def test_networks_come_and_go_on_a_running_server(
    managers: dict[str, EtcdSubnetManager],
) -> None:
    server = RemoteServer({"blue": managers["blue"]}, poll_timeout=5.0)
    port = await server.start("127.0.0.1", 0)
    watch = RemoteNetworks(f"127.0.0.1:{port}", None).watch().__aiter__()
    try:
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"blue"}
        await server.add_network("red", managers["red"])
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"blue", "red"}

        red = RemoteSubnetManager(f"127.0.0.1:{port}", "red")
        config = await red.get_network_config()
        assert str(config.network) == "10.8.0.0/16"
        lease = await red.acquire_lease(config, LeaseAttrs(public_ip=IPv4Address("198.18.0.7")))
        assert lease.subnet is not None and config.network is not None
        assert lease.subnet.subnet_of(config.network)
        stored = await managers["red"].list_leases()
        assert [s.subnet for s in stored] == [lease.subnet]  # under <prefix>/red/subnets
        assert await managers["blue"].list_leases() == []

        assert await server.remove_network("blue") is managers["blue"]
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"red"}
        blue = RemoteSubnetManager(f"127.0.0.1:{port}", "blue")
        with pytest.raises(Exception, match="unknown network"):
            await blue.get_network_config()
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
        await server.close()


async def test_lease_watch_survives_a_server_restart(
    managers: dict[str, EtcdSubnetManager],
) -> None:
    blue = managers["blue"]
    server = RemoteServer({"blue": blue}, poll_timeout=1.0)
    port = await server.start("127.0.0.1", 0)
    client = RemoteSubnetManager(f"127.0.0.1:{port}", "blue", poll_timeout=1.0)
    config = await client.get_network_config()
    mine = await client.acquire_lease(config, LeaseAttrs(public_ip=IPv4Address("198.18.0.1")))
    watch = client.watch_leases(mine).__aiter__()
    try:
        assert list(await asyncio.wait_for(watch.__anext__(), 10)) == []
        peer = await blue.acquire_lease(config, LeaseAttrs(public_ip=IPv4Address("198.18.0.2")))
        batch = await asyncio.wait_for(watch.__anext__(), 10)
        assert [(e.type, e.lease.subnet) for e in batch] == [(EventType.ADDED, peer.subnet)]

        await server.close()
        # while the server is down another peer comes and the first one goes away
        third = await blue.acquire_lease(config, LeaseAttrs(public_ip=IPv4Address("198.18.0.3")))
        await blue.registry.delete(peer, only_if_unchanged=False)
        server = RemoteServer({"blue": blue}, poll_timeout=1.0)
        await server.start("127.0.0.1", port)
        # the old cursor means nothing to the new server: a snapshot, diffed by the client
        batch = await asyncio.wait_for(watch.__anext__(), 30)
        changes = {(e.type, e.lease.subnet) for e in batch}
        assert changes == {(EventType.REMOVED, peer.subnet), (EventType.ADDED, third.subnet)}
        renewed = await client.renew_lease(mine)
        assert renewed.subnet == mine.subnet
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
        await server.close()
