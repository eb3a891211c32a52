"""Raw registry operations on a real etcd: layout, transactions, reservations, watch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import aetcd
import pytest

from flannel.etcd import EtcdClientConfig, EtcdConnection
from flannel.lease import LeaseAttrs
from flannel.registry import Registry, WatchCompacted
from flannel.testing.etcd import EtcdServer

pytestmark = pytest.mark.timeout(60)

PREFIX = "/coreos.com/network"
A = LeaseAttrs(public_ip=IPv4Address("1.2.3.4"))
B = LeaseAttrs(
    public_ip=IPv4Address("10.0.0.5"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "4e:8a:0b:11:22:33"},
)


@pytest.fixture
async def raw(etcd_server: EtcdServer) -> AsyncIterator[aetcd.Client]:
    client = aetcd.Client(host=etcd_server.host, port=etcd_server.port)
    yield client
    await client.close()


@pytest.fixture
async def reg(etcd_server: EtcdServer) -> AsyncIterator[Registry]:
    conn = EtcdConnection(EtcdClientConfig(endpoints=(etcd_server.endpoint,)))
    yield Registry(conn, PREFIX)
    await conn.close()


async def etcd_lease_ids(raw: aetcd.Client) -> set[int]:
    resp = await raw.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest())
    return {le.ID for le in resp.leases}


def test_key_layout_and_trailing_slash() -> None:
    conn = EtcdConnection(EtcdClientConfig(endpoints=("127.0.0.1:1",)))
    for prefix in ("/coreos.com/network", "/coreos.com/network/", "coreos.com/network"):
        r = Registry(conn, prefix)
        assert r.config_key == b"/coreos.com/network/config"
        assert r.subnets_prefix == b"/coreos.com/network/subnets/"
    dual = Registry(conn, PREFIX).lease_key(
        IPv4Network("10.244.1.0/24"), IPv6Network("fc00:0:0:1::/64")
    )
    assert dual == b"/coreos.com/network/subnets/10.244.1.0-24&fc00:0:0:1::-64"
    named = Registry(conn, "/x/", network_name="blue")
    assert named.config_key == b"/x/blue/config"


async def test_config_roundtrip_verbatim(reg: Registry) -> None:
    assert await reg.get_config() is None
    doc = b'{ "Network": "10.1.0.0/16",\n  "Backend": {"Type": "vxlan"} }'
    await reg.put_config(doc)
    assert await reg.get_config() == doc


async def test_create_is_create_if_absent_and_revokes_on_conflict(
    reg: Registry, raw: aetcd.Client
) -> None:
    subnet = IPv4Network("10.1.5.0/24")
    lease = await reg.create(subnet, None, A, 120)
    assert lease is not None and lease.etcd_lease_id
    got = await raw.get(b"/coreos.com/network/subnets/10.1.5.0-24")
    assert got is not None
    assert got.value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    assert got.mod_revision == lease.mod_revision and got.lease == lease.etcd_lease_id

    before = {
        le.ID for le in (await raw.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest())).leases
    }
    assert await reg.create(subnet, None, B, 120) is None
    after = {
        le.ID for le in (await raw.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest())).leases
    }
    assert after == before  # the losing attempt's etcd lease was revoked
    got2 = await raw.get(b"/coreos.com/network/subnets/10.1.5.0-24")
    assert got2 is not None and got2.value == got.value


async def test_list_is_one_read_and_tells_reservations_apart(
    reg: Registry, raw: aetcd.Client
) -> None:
    await reg.create(IPv4Network("10.1.1.0/24"), None, A, 120)
    await reg.create(IPv4Network("10.1.2.0/24"), None, B, None)
    await raw.put(b"/coreos.com/network/subnets/not-a-key", b"{}")
    await raw.put(b"/coreos.com/network/subnetsX/10.1.3.0-24", b"{}")  # not under subnets/
    listing = await reg.list_leases()
    by_key = {le.key: le for le in listing.leases}
    assert set(by_key) == {"10.1.1.0-24", "10.1.2.0-24"}
    assert listing.skipped == 1
    assert not by_key["10.1.1.0-24"].is_reservation
    assert by_key["10.1.2.0-24"].is_reservation and by_key["10.1.2.0-24"].etcd_lease_id == 0
    assert by_key["10.1.2.0-24"].attrs == B
    assert listing.revision >= max(le.mod_revision for le in listing.leases)


async def test_update_is_compare_and_swap(reg: Registry, raw: aetcd.Client) -> None:
    subnet = IPv4Network("10.1.7.0/24")
    lease = await reg.create(subnet, None, A, 120)
    assert lease is not None
    renewed = await reg.update(lease, A, 300)
    assert renewed is not None and renewed.etcd_lease_id != lease.etcd_lease_id
    assert (await raw.get_lease_info(lease.etcd_lease_id)).TTL == -1  # old one revoked
    # A stale copy names the revoked etcd lease, so its compare fails.
    assert await reg.update(lease, A, 300) is None
    # Someone else rewrites the key: our renewal must not overwrite it.
    await raw.put(b"/coreos.com/network/subnets/10.1.7.0-24", b'{"PublicIP":"9.9.9.9"}')
    assert await reg.update(renewed, A, 300) is None
    got = await raw.get(b"/coreos.com/network/subnets/10.1.7.0-24")
    assert got is not None and got.value == b'{"PublicIP":"9.9.9.9"}'
    # Gone: no resurrection either.
    await raw.delete(b"/coreos.com/network/subnets/10.1.7.0-24")
    assert await reg.update(renewed, A, 300) is None
    assert await raw.get(b"/coreos.com/network/subnets/10.1.7.0-24") is None


async def test_reservation_update_keeps_it_leaseless(reg: Registry, raw: aetcd.Client) -> None:
    res = await reg.create(IPv4Network("10.1.8.0/24"), None, A, None)
    assert res is not None and res.is_reservation
    again = await reg.update(res, B, None)
    assert again is not None and again.is_reservation
    got = await raw.get(b"/coreos.com/network/subnets/10.1.8.0-24")
    assert got is not None and got.lease == 0 and b"vxlan" in got.value
    assert await reg.update(res, A, None) is None  # stale mod_revision


async def test_delete_only_if_unchanged(reg: Registry) -> None:
    lease = await reg.create(IPv4Network("10.1.9.0/24"), None, A, 120)
    assert lease is not None
    renewed = await reg.update(lease, A, 120)
    assert renewed is not None
    assert not await reg.delete(lease)  # stale copy
    assert await reg.delete(renewed)
    assert await reg.get_lease(IPv4Network("10.1.9.0/24")) is None


async def test_remaining_ttl(reg: Registry) -> None:
    lease = await reg.create(IPv4Network("10.1.10.0/24"), None, A, 100)
    assert lease is not None
    ttl = await reg.remaining_ttl(lease.etcd_lease_id)
    assert ttl is not None and 90 <= ttl <= 100
    await reg.revoke(lease.etcd_lease_id)
    assert await reg.remaining_ttl(lease.etcd_lease_id) is None
    assert await reg.get_lease(IPv4Network("10.1.10.0/24")) is None  # revoke deletes the key


async def test_watch_batches_and_compaction(reg: Registry, raw: aetcd.Client) -> None:
    listing = await reg.list_leases()
    stream = reg.watch(listing.revision + 1)
    first = asyncio.ensure_future(anext(stream))
    lease = await reg.create(IPv4Network("10.1.5.0/24"), None, A, 60)
    assert lease is not None
    batch = await asyncio.wait_for(first, 10)
    assert [(e.key, e.deleted) for e in batch.events] == [("10.1.5.0-24", False)]
    assert batch.events[0].lease is not None and batch.events[0].lease.attrs == A
    assert batch.next_revision == lease.mod_revision + 1
    await reg.delete(lease)
    batch = await asyncio.wait_for(anext(stream), 10)
    assert [(e.key, e.deleted, e.lease) for e in batch.events] == [("10.1.5.0-24", True, None)]
    await stream.aclose()

    head = await raw.get_prefix(b"/")
    await raw.compact(head.header.revision)
    with pytest.raises(WatchCompacted):
        await anext(reg.watch(listing.revision + 1))


KEYS_TO_AGREE_ON = [
    "10.1.5.0-24", "0.0.0.0-0", "10.1.5.0-32", "255.255.255.255-32", "10.0.0.0-8",
    "10.1.5.1-24", "010.1.5.0-24", "10.1.5.0-024", "10.1.5.0-33", "10.1.5.256-24",
    "10.1.5.0-24hi", "10.1.5-24", "10.1.5.0-04", "1.2.3.0-24&fd00::-64", "0.0.0.0-0&fd00:1::-64",
    "10.1.5.0-24&FD00::-64", " 10.1.5.0-24", "10.1.5.0-", "-24", "128.0.0.0-1",
]  # fmt: skip


@pytest.mark.parametrize("name", KEYS_TO_AGREE_ON)
def test_fast_key_span_agrees_with_the_lease_codec(name: str) -> None:
    from flannel.lease import LeaseFormatError, parse_subnet_key

    reg = Registry(EtcdConnection(EtcdClientConfig(endpoints=("127.0.0.1:1",))), PREFIX)
    key = reg.subnets_prefix + name.encode()
    try:
        subnet, v6 = parse_subnet_key(name)
    except LeaseFormatError:
        with pytest.raises(LeaseFormatError):
            reg.key_span(key)
        return
    span, v6_got = reg.key_span(key)
    assert v6_got == v6
    if subnet is None:
        assert span is None
    else:
        assert span == (int(subnet.network_address), int(subnet.broadcast_address))


async def test_aetcd_methods_through_call_fail_with_our_errors(etcd_server: EtcdServer) -> None:
    """doctor and the CLI call aetcd's own methods through EtcdConnection.call."""
    from flannel.etcd import EtcdUnavailable

    conn = EtcdConnection(EtcdClientConfig(endpoints=(etcd_server.endpoint,), dial_timeout=1))
    await conn.call("put", lambda c: c.put(b"/k", b"v"))
    got = await conn.call("get", lambda c: c.get(b"/k"))
    assert got.value == b"v"
    await asyncio.to_thread(etcd_server.stop)
    with pytest.raises(
        EtcdUnavailable, match=r"etcd at http://127\.0\.0\.1:\d+ .*check that etcd is running"
    ):
        await conn.call("get", lambda c: c.get(b"/k"))
    await conn.close()
