"""EtcdSubnetManager against a real etcd: acquire, reuse, races, renew, loss, reservations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import aetcd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel.config import NetworkConfig, parse_config
from flannel.etcd import EtcdClientConfig, EtcdUnavailable
from flannel.etcd_manager import EtcdSubnetManager, collapse_spans
from flannel.lease import LeaseAttrs
from flannel.manager import ConfigNotFound, LeaseLost, OutOfSubnets, PreviousSubnets
from flannel.testing.etcd import EtcdServer, free_port

PREFIX = "/coreos.com/network"
CONFIG = (
    b'{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.32.0",'
    b'"Backend":{"Type":"alloc"}}'
)

pytestmark = pytest.mark.timeout(60)


def ip(n: int) -> IPv4Address:
    return IPv4Address("198.18.0.0") + n


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(public_ip=ip(n))


@pytest.fixture
async def raw(etcd_server: EtcdServer) -> AsyncIterator[aetcd.Client]:
    client = aetcd.Client(host=etcd_server.host, port=etcd_server.port)
    await client.put(f"{PREFIX}/config".encode(), CONFIG)
    yield client
    await client.close()


@pytest.fixture
def config() -> NetworkConfig:
    return parse_config(CONFIG)


def make(server: EtcdServer, **kw: object) -> EtcdSubnetManager:
    return EtcdSubnetManager(EtcdClientConfig(endpoints=(server.endpoint,)), PREFIX, **kw)  # type: ignore[arg-type]


async def test_config_read_and_missing(etcd_server: EtcdServer) -> None:
    async with make(etcd_server) as mgr:
        with pytest.raises(ConfigNotFound, match=r"etcdctl put /coreos\.com/network/config"):
            await mgr.get_network_config()
        await mgr.set_config(CONFIG)
        assert await mgr.get_config_raw() == CONFIG
        cfg = await mgr.get_network_config()
        assert cfg.network == IPv4Network("10.5.0.0/16")


async def test_trailing_slash_prefix_is_harmless(
    raw: aetcd.Client, etcd_server: EtcdServer
) -> None:
    mgr = EtcdSubnetManager(EtcdClientConfig(endpoints=(etcd_server.endpoint,)), PREFIX + "/")
    async with mgr:
        cfg = await mgr.get_network_config()
        lease = await mgr.acquire_lease(cfg, attrs(1))
    got = await raw.get(f"{PREFIX}/subnets/{lease.key}".encode())
    assert got is not None


async def test_acquire_writes_flanneld_bytes(raw: aetcd.Client, etcd_server: EtcdServer) -> None:
    async with make(etcd_server, lease_ttl=600) as mgr:
        cfg = await mgr.get_network_config()
        lease = await mgr.acquire_lease(cfg, LeaseAttrs(public_ip=IPv4Address("1.2.3.4")))
    assert lease.subnet is not None and cfg.contains_subnet(lease.subnet)
    key = f"{PREFIX}/subnets/{lease.subnet.network_address}-24".encode()
    got = await raw.get(key)
    assert got is not None
    assert got.value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    assert got.lease == lease.etcd_lease_id != 0
    info = await raw.get_lease_info(got.lease)
    assert 590 <= info.TTL <= 600
    assert lease.expiration is not None and lease.expiration > time.time() + 590


async def test_two_managers_distinct_and_restart_reuses(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server) as a, make(etcd_server) as b:
        la = await a.acquire_lease(config, attrs(1))
        lb = await b.acquire_lease(config, attrs(2))
        assert la.subnet != lb.subnet
        assert {le.key for le in await a.list_leases()} == {la.key, lb.key}
    async with make(etcd_server) as again:
        la2 = await again.acquire_lease(config, attrs(1))
    assert la2.subnet == la.subnet
    assert la2.etcd_lease_id != la.etcd_lease_id
    # The old etcd lease was revoked, not leaked.
    info = await raw.get_lease_info(la.etcd_lease_id)
    assert info.TTL == -1


async def test_previous_subnet_and_incompatible_own_lease(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server) as mgr:
        prev = PreviousSubnets(subnet=IPv4Network("10.5.7.0/24"))
        lease = await mgr.acquire_lease(config, attrs(3), prev)
        assert lease.subnet == IPv4Network("10.5.7.0/24")
        # Outside the range: ignored, a random subnet is allocated instead.
        other = await mgr.acquire_lease(
            config, attrs(4), PreviousSubnets(subnet=IPv4Network("10.6.7.0/24"))
        )
        assert other.subnet is not None and config.contains_subnet(other.subnet)
        # Config moves to another network: our old lease is deleted, a new one allocated.
        new_cfg = parse_config(b'{"Network":"10.9.0.0/16"}')
        moved = await mgr.acquire_lease(new_cfg, attrs(3))
        assert moved.subnet is not None and moved.subnet.subnet_of(IPv4Network("10.9.0.0/16"))
    assert await raw.get(f"{PREFIX}/subnets/10.5.7.0-24".encode()) is None


async def test_25_concurrent_managers_get_distinct_subnets(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    managers = [make(etcd_server) for _ in range(25)]
    try:
        await asyncio.gather(*(m.connect() for m in managers))
        leases = await asyncio.gather(
            *(m.acquire_lease(config, attrs(i + 10)) for i, m in enumerate(managers))
        )
    finally:
        await asyncio.gather(*(m.close() for m in managers))
    subnets = {le.subnet for le in leases}
    assert len(subnets) == 25
    assert all(config.contains_subnet(s) for s in subnets)
    listing = await raw.get_prefix(f"{PREFIX}/subnets/".encode())
    assert len(listing) == 25


async def test_out_of_subnets(raw: aetcd.Client, etcd_server: EtcdServer) -> None:
    cfg = parse_config(b'{"Network":"10.7.0.0/22","SubnetLen":24}')  # 10.7.1-3.0: 3 subnets
    async with make(etcd_server) as mgr:
        for i in range(3):
            await mgr.acquire_lease(cfg, attrs(i))
        with pytest.raises(OutOfSubnets, match=r"out of subnets: every subnet of 10\.7\.0\.0/22"):
            await mgr.acquire_lease(cfg, attrs(99))


@pytest.mark.timeout(40)
async def test_renew_keeps_short_lease_alive(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server, lease_ttl=5) as mgr:
        lease = await mgr.acquire_lease(config, attrs(1))
        first = lease
        deadline = time.monotonic() + 30  # six TTLs: only renewals can keep it
        while time.monotonic() < deadline:
            await asyncio.sleep(2)
            lease = await mgr.renew_lease(lease)
        assert lease.subnet == first.subnet
        got = await raw.get(f"{PREFIX}/subnets/{lease.key}".encode())
        assert got is not None and got.lease == lease.etcd_lease_id
        # Without renewal it expires: the key disappears and wait_lease_lost returns.
        await asyncio.wait_for(mgr.wait_lease_lost(lease), 10)
        assert await raw.get(f"{PREFIX}/subnets/{lease.key}".encode()) is None
        with pytest.raises(LeaseLost):
            await mgr.renew_lease(lease)


async def test_deleted_or_taken_lease_is_lost(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server) as mgr:
        lease = await mgr.acquire_lease(config, attrs(1))
        key = f"{PREFIX}/subnets/{lease.key}".encode()
        waiter = asyncio.create_task(mgr.wait_lease_lost(lease))
        await asyncio.sleep(0.3)
        # Our own renewal is not a loss.
        lease = await mgr.renew_lease(lease)
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await raw.delete(key)
        await asyncio.wait_for(waiter, 10)
        with pytest.raises(LeaseLost, match="gone or no longer ours"):
            await mgr.renew_lease(lease)
        # Another host takes the subnet: our renew must not overwrite it.
        await raw.put(key, b'{"PublicIP":"198.18.9.9","PublicIPv6":null}')
        with pytest.raises(LeaseLost):
            await mgr.renew_lease(lease)
        got = await raw.get(key)
        assert got is not None and b"198.18.9.9" in got.value
        await asyncio.wait_for(mgr.wait_lease_lost(lease), 5)


async def test_reservation_survives_renewals_and_is_never_reassigned(
    raw: aetcd.Client, etcd_server: EtcdServer
) -> None:
    async with make(etcd_server, lease_ttl=3) as mgr:
        cfg = await mgr.set_config(b'{"Network":"10.7.0.0/22","SubnetLen":24}')  # 3 subnets
        res = await mgr.reserve(IPv4Network("10.7.2.0/24"), ip(50))
        assert res.is_reservation and res.etcd_lease_id == 0
        key = f"{PREFIX}/subnets/10.7.2.0-24".encode()
        # Other hosts fill the rest and then run out: the reservation is never handed out.
        others = [await mgr.acquire_lease(cfg, attrs(i)) for i in (1, 2)]
        assert IPv4Network("10.7.2.0/24") not in {le.subnet for le in others}
        with pytest.raises(OutOfSubnets):
            await mgr.acquire_lease(cfg, attrs(3))
        # The reserved host acquires: it gets the reservation, still without TTL.
        mine = await mgr.acquire_lease(cfg, LeaseAttrs(public_ip=ip(50), backend_type="alloc"))
        assert mine.subnet == IPv4Network("10.7.2.0/24") and mine.is_reservation
        for _ in range(3):
            mine = await mgr.renew_lease(mine)
            await asyncio.sleep(1)
        got = await raw.get(key)
        assert got is not None and got.lease == 0
        assert got.value == b'{"PublicIP":"198.18.0.50","PublicIPv6":null,"BackendType":"alloc"}'
        with pytest.raises(Exception, match="already leased to"):
            await mgr.reserve(IPv4Network("10.7.2.0/24"), ip(51))
        await mgr.unreserve(IPv4Network("10.7.2.0/24"))
        assert await raw.get(key) is None


async def test_ipv6_only_leases_are_told_apart_by_ipv6(
    raw: aetcd.Client, etcd_server: EtcdServer
) -> None:
    cfg = parse_config(b'{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56"}')
    a6 = LeaseAttrs(public_ipv6=IPv6Address("2001:db8::1"))
    b6 = LeaseAttrs(public_ipv6=IPv6Address("2001:db8::2"))
    async with make(etcd_server) as mgr:
        la = await mgr.acquire_lease(cfg, a6)
        lb = await mgr.acquire_lease(cfg, b6)
        assert la.subnet is None and la.ipv6_subnet != lb.ipv6_subnet
        assert isinstance(la.ipv6_subnet, IPv6Network)
        assert la.key.startswith("0.0.0.0-0&fd00:10:")
        again = await mgr.acquire_lease(cfg, a6)
        assert again.ipv6_subnet == la.ipv6_subnet


async def test_unreachable_etcd_is_one_clear_line() -> None:
    port = free_port()
    mgr = EtcdSubnetManager(
        EtcdClientConfig(endpoints=(f"http://127.0.0.1:{port}",), dial_timeout=1)
    )
    with pytest.raises(EtcdUnavailable) as info:
        await mgr.connect()
    text = str(info.value)
    assert f"http://127.0.0.1:{port}" in text and "\n" not in text
    assert "check that etcd is running" in text
    await mgr.close()


async def test_failover_to_second_endpoint(raw: aetcd.Client, etcd_server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    mgr = EtcdSubnetManager(
        EtcdClientConfig(endpoints=(dead, etcd_server.endpoint), dial_timeout=1)
    )
    async with mgr:
        cfg = await mgr.get_network_config()
        lease = await mgr.acquire_lease(cfg, attrs(1))
    assert lease.subnet is not None


@given(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 3)), max_size=60))
def test_collapse_spans_covers_exactly_the_same_addresses(raw_spans: list[tuple[int, int]]) -> None:
    base = int(IPv4Address("10.0.0.0"))
    # /24-/22 aligned spans, as lease keys are
    spans = []
    for index, shift in raw_spans:
        size = 256 << shift
        first = base + (index * 256 // size) * size
        spans.append((first, first + size - 1))
    nets = collapse_spans(spans)
    covered = {a for f, last in spans for a in range(f - base >> 8, (last - base >> 8) + 1)}
    got = {
        a
        for n in nets
        for a in range(
            int(n.network_address) - base >> 8, (int(n.broadcast_address) - base >> 8) + 1
        )
    }
    assert got == covered
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


async def test_failover_when_the_current_endpoint_dies(etcd_server: EtcdServer) -> None:
    """Two independent etcds stand in for two members: the manager moves to the second."""
    second = EtcdServer()
    with second.running():
        for server, doc in ((etcd_server, b'{"Network":"10.1.0.0/16"}'), (second, CONFIG)):
            async with make(server) as admin:
                await admin.set_config(doc)
        mgr = EtcdSubnetManager(
            EtcdClientConfig(endpoints=(etcd_server.endpoint, second.endpoint), dial_timeout=2)
        )
        async with mgr:
            assert await mgr.get_config_raw() == b'{"Network":"10.1.0.0/16"}'
            await asyncio.to_thread(etcd_server.stop)
            assert await mgr.get_config_raw() == CONFIG


async def test_a_lease_turned_into_a_reservation_stays_ours(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server) as mgr:
        lease = await mgr.acquire_lease(config, attrs(5))
        assert lease.subnet is not None
        # The admin reserves the subnet our host holds: renewals continue, without TTL.
        res = await mgr.reserve(lease.subnet, ip(5))
        assert res.is_reservation
        renewed = await mgr.renew_lease(lease)
        assert renewed.is_reservation and renewed.subnet == lease.subnet
        got = await raw.get(f"{PREFIX}/subnets/{lease.key}".encode())
        assert got is not None and got.lease == 0
        # A reservation made for our host elsewhere wins over an ordinary lease on restart.
        other = await mgr.acquire_lease(config, attrs(6))
        assert other.subnet is not None
        await mgr.unreserve(lease.subnet)
        target = (
            IPv4Network("10.5.30.0/24")
            if other.subnet != IPv4Network("10.5.30.0/24")
            else IPv4Network("10.5.31.0/24")
        )
        await mgr.reserve(target, ip(6))
        again = await mgr.acquire_lease(config, attrs(6))
        assert again.subnet == target and again.is_reservation


async def test_dual_stack_keys_and_reuse(raw: aetcd.Client, etcd_server: EtcdServer) -> None:
    cfg = parse_config(
        b'{"Network":"10.8.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:8::/48",'
        b'"Backend":{"Type":"alloc"}}'
    )
    me = LeaseAttrs(public_ip=ip(1), public_ipv6=IPv6Address("2001:db8::1"))
    async with make(etcd_server) as mgr:
        lease = await mgr.acquire_lease(cfg, me)
        assert lease.subnet is not None and lease.ipv6_subnet is not None
        v4, v6 = lease.subnet.network_address, lease.ipv6_subnet.network_address
        key = f"{PREFIX}/subnets/{v4}-24&{v6}-64"
        got = await raw.get(key.encode())
        assert got is not None
        assert got.value == b'{"PublicIP":"198.18.0.1","PublicIPv6":"2001:db8::1"}'
        again = await mgr.acquire_lease(cfg, me)
        assert (again.subnet, again.ipv6_subnet) == (lease.subnet, lease.ipv6_subnet)
        # The same host without IPv6 in the config: the dual-stack lease no longer fits.
        v4only = await mgr.acquire_lease(parse_config(b'{"Network":"10.8.0.0/16"}'), me)
        assert v4only.ipv6_subnet is None
        assert await raw.get(key.encode()) is None


async def test_a_retried_create_recognises_its_own_write(
    raw: aetcd.Client, etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create whose reply was lost is retried by EtcdConnection; the retry finds the
    key already written with our etcd lease and value, which is success, not a conflict."""
    async with make(etcd_server) as mgr:
        subnet = IPv4Network("10.5.9.0/24")
        first = await mgr.registry.create(subnet, None, attrs(1), 60)
        assert first is not None

        async def same_lease(ttl: int) -> tuple[int, float]:
            return first.etcd_lease_id, time.time() + ttl

        monkeypatch.setattr(mgr.registry, "grant_with_expiry", same_lease)
        again = await mgr.registry.create(subnet, None, attrs(1), 60)
        assert again is not None and again.etcd_lease_id == first.etcd_lease_id
        # With another value it is a genuine conflict.
        assert await mgr.registry.create(subnet, None, attrs(2), 60) is None
