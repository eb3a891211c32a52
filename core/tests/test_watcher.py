"""Peer lease watch against a real etcd: joins, compaction, restarts, relist, bad values."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Address, IPv4Network

import aetcd
import pytest

from flannel.config import NetworkConfig, parse_config
from flannel.etcd import EtcdClientConfig, EtcdConnection
from flannel.etcd_manager import EtcdSubnetManager
from flannel.events import Event, EventType
from flannel.lease import Lease, LeaseAttrs
from flannel.registry import KeyEvent, LeaseList, Registry
from flannel.testing.etcd import EtcdServer
from flannel.watcher import Backoff, LeaseWatcher

PREFIX = "/coreos.com/network"
CONFIG = (
    b'{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.40.0",'
    b'"Backend":{"Type":"alloc"}}'
)

pytestmark = pytest.mark.timeout(60)


def attrs(n: int) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address("198.18.0.0") + n)


def key(subnet: str) -> bytes:
    return f"{PREFIX}/subnets/{subnet}".encode()


def value(n: int) -> bytes:
    return f'{{"PublicIP":"198.18.0.{n}","PublicIPv6":null}}'.encode()


@pytest.fixture
def config() -> NetworkConfig:
    return parse_config(CONFIG)


@pytest.fixture
async def raw(etcd_server: EtcdServer) -> AsyncIterator[aetcd.Client]:
    client = aetcd.Client(host=etcd_server.host, port=etcd_server.port)
    await client.put(f"{PREFIX}/config".encode(), CONFIG)
    yield client
    await client.close()


def make(server: EtcdServer, **kw: object) -> EtcdSubnetManager:
    return EtcdSubnetManager(EtcdClientConfig(endpoints=(server.endpoint,)), PREFIX, **kw)  # type: ignore[arg-type]


class Peers:
    """Consumes a watch in a task and keeps the peer map the events describe."""

    def __init__(self, batches: AsyncIterator[Sequence[Event]]) -> None:
        self.batches = batches
        self.peers: dict[str, Lease] = {}
        self.log: list[list[Event]] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self.batches:
            self.log.append(list(batch))
            for ev in batch:
                if ev.type is EventType.ADDED:
                    self.peers[ev.lease.key] = ev.lease
                else:
                    self.peers.pop(ev.lease.key, None)
            self.changed.set()

    async def until(self, predicate: object, limit: float = 20) -> None:
        async def wait() -> None:
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                if self.task.done():
                    self.task.result()
                    raise AssertionError("watch ended")
                await self.changed.wait()

        await asyncio.wait_for(wait(), limit)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_watcher_started_before_25_joins_sees_all(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server) as me:
        own = await me.acquire_lease(config, attrs(1))
        peers = Peers(me.watch_leases(own))
        await peers.until(lambda: len(peers.log) >= 1)
        assert peers.log[0] == []  # first batch: the (empty) list of peers
        managers = [make(etcd_server) for _ in range(25)]
        try:
            leases = await asyncio.gather(
                *(m.acquire_lease(config, attrs(i + 10)) for i, m in enumerate(managers))
            )
            expected = {le.key: le for le in leases}
            await peers.until(lambda: set(peers.peers) == set(expected))
            assert own.key not in peers.peers
            assert all(peers.peers[k].attrs == le.attrs for k, le in expected.items())
            # A removal carries the last known attrs (etcd's DELETE event has no value).
            gone = leases[3]
            await raw.delete(key(gone.key))
            await peers.until(lambda: gone.key not in peers.peers)
            removed = [ev for b in peers.log for ev in b if ev.type is EventType.REMOVED]
            assert [ev.lease.attrs for ev in removed] == [gone.attrs]
            # Our own renewals never show up as peer events.
            count = sum(len(b) for b in peers.log)
            await me.renew_lease(own)
            await raw.put(key("10.5.200.0-24"), value(77))
            await peers.until(lambda: "10.5.200.0-24" in peers.peers)
            assert sum(len(b) for b in peers.log) == count + 1
        finally:
            await peers.stop()
            await asyncio.gather(*(m.close() for m in managers))


async def test_one_txn_is_one_batch(raw: aetcd.Client, etcd_server: EtcdServer) -> None:
    async with make(etcd_server) as me:
        peers = Peers(me.watch_leases(None))
        await peers.until(lambda: len(peers.log) >= 1)
        await raw.transaction(
            compare=[],
            success=[raw.transactions.put(key(f"10.5.{i}.0-24"), value(i)) for i in (1, 2, 3)],
            failure=[],
        )
        await peers.until(lambda: len(peers.peers) == 3)
        assert [len(b) for b in peers.log] == [0, 3]
        await peers.stop()


async def test_compacted_revision_recovers_without_loss(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    for i in (1, 2, 3):
        await raw.put(key(f"10.5.{i}.0-24"), value(i))
    async with make(etcd_server) as me:
        me._config = config
        batches = me.watch_leases(None)
        first = await anext(batches)
        assert sorted(ev.lease.key for ev in first) == ["10.5.1.0-24", "10.5.2.0-24", "10.5.3.0-24"]
        # While nobody watches: add, change, delete; then compact past all of it.
        await raw.put(key("10.5.4.0-24"), value(4))
        await raw.put(key("10.5.2.0-24"), value(22))
        await raw.delete(key("10.5.1.0-24"))
        await raw.put(key("10.5.9.0-24"), value(9))
        await raw.delete(key("10.5.9.0-24"))
        status = await raw.get(f"{PREFIX}/config".encode())
        assert status is not None
        await raw.compact(status.header.revision, physical=True)
        diff = await asyncio.wait_for(anext(batches), 20)
        got = {(ev.type, ev.lease.key, str(ev.lease.attrs.public_ip)) for ev in diff}
        assert got == {
            (EventType.ADDED, "10.5.4.0-24", "198.18.0.4"),
            (EventType.ADDED, "10.5.2.0-24", "198.18.0.22"),
            (EventType.REMOVED, "10.5.1.0-24", "198.18.0.1"),
        }
        # And the live watch goes on from the relist revision.
        await raw.put(key("10.5.5.0-24"), value(5))
        nxt = await asyncio.wait_for(anext(batches), 20)
        assert [(ev.type, ev.lease.key) for ev in nxt] == [(EventType.ADDED, "10.5.5.0-24")]
        await batches.aclose()  # type: ignore[attr-defined]


@pytest.mark.timeout(90)
async def test_etcd_restart_loses_nothing_and_renewals_go_on(
    etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    async with make(etcd_server, lease_ttl=30) as me, make(etcd_server) as other:
        await me.set_config(CONFIG)
        own = await me.acquire_lease(config, attrs(1))
        peers = Peers(me.watch_leases(own))
        first = await other.acquire_lease(config, attrs(2))
        await peers.until(lambda: first.key in peers.peers)
        lost = asyncio.create_task(me.wait_lease_lost(own))

        await asyncio.to_thread(etcd_server.stop)
        await asyncio.sleep(10)  # the issue: etcd stopped for 10 s
        await asyncio.to_thread(etcd_server.start)
        # Changes right after the restart, likely before the watch has reconnected.
        second = await other.acquire_lease(config, attrs(3))
        await other.registry.delete(first)
        third = await other.acquire_lease(config, attrs(4))
        await peers.until(lambda: set(peers.peers) == {second.key, third.key}, limit=30)
        removed = [ev.lease for b in peers.log for ev in b if ev.type is EventType.REMOVED]
        assert [le.key for le in removed] == [first.key]
        own = await me.renew_lease(own)
        assert not lost.done()
        # The own-lease watch survived the restart too: losing the lease is noticed.
        await other.registry.delete(own, only_if_unchanged=False)
        await asyncio.wait_for(lost, 20)
        await peers.stop()


async def test_periodic_relist_repairs_a_missed_event(
    raw: aetcd.Client, etcd_server: EtcdServer
) -> None:
    await raw.put(key("10.5.1.0-24"), value(1))
    async with make(etcd_server, resync_interval=0.5) as me:
        watcher = LeaseWatcher(me.registry, None, resync_interval=0.5)
        batches = watcher.batches()
        first = await anext(batches)
        assert [ev.lease.key for ev in first] == ["10.5.1.0-24"]
        watcher.known.pop("10.5.1.0-24")  # pretend the watch had missed it
        again = await asyncio.wait_for(anext(batches), 10)
        assert [(ev.type, ev.lease.key) for ev in again] == [(EventType.ADDED, "10.5.1.0-24")]
        await batches.aclose()


async def test_malformed_entries_are_skipped_with_one_warning(
    raw: aetcd.Client,
    etcd_server: EtcdServer,
    config: NetworkConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flannel.registry")
    await raw.put(key("10.5.1.0-24"), b"{not json")
    await raw.put(key("garbage"), value(1))
    async with make(etcd_server) as me:
        me._config = config
        peers = Peers(me.watch_leases(None))
        await peers.until(lambda: len(peers.log) >= 1)
        assert peers.log[0] == []
        await raw.put(key("10.5.2.0-24"), b'{"PublicIP":42}')  # wrong type
        await raw.put(key("10.5.3.0-24"), b"[1,2]")  # not an object
        await raw.put(key("10.9.1.0-24"), value(5))  # outside Network
        await raw.put(key("10.5.4.0-24"), value(4))  # fine
        await peers.until(lambda: "10.5.4.0-24" in peers.peers)
        # A good peer overwritten with garbage is removed, not kept with stale data.
        await raw.put(key("10.5.4.0-24"), b"oops")
        await peers.until(lambda: "10.5.4.0-24" not in peers.peers)
        assert set(peers.peers) == set()
        assert not peers.task.done()
        # Listing again (acquire) warns no second time for the same key and revision.
        await me.list_leases()
        await peers.stop()
    text = [r.getMessage() for r in caplog.records]
    for bad in ("10.5.1.0-24", "garbage", "10.5.2.0-24", "10.5.3.0-24", "10.9.1.0-24"):
        assert sum(bad in t for t in text) == 1, (bad, text)
    assert any("outside Network 10.5.0.0/16" in t for t in text)


# --- pure bookkeeping -------------------------------------------------------------------


def _lease(subnet: str, n: int, rev: int) -> Lease:
    return Lease(subnet=IPv4Network(subnet), attrs=attrs(n), expiration=1e18, mod_revision=rev)


def test_snapshot_diff_and_events_without_etcd() -> None:
    registry = Registry(EtcdConnection(EtcdClientConfig(endpoints=("127.0.0.1:1",))), PREFIX)
    own = _lease("10.5.9.0/24", 9, 1)
    w = LeaseWatcher(registry, own)
    a, b = _lease("10.5.1.0/24", 1, 2), _lease("10.5.2.0/24", 2, 3)
    first = w.apply_snapshot(LeaseList([a, b, own], revision=3))
    assert {ev.lease.key for ev in first} == {a.key, b.key}
    b2 = _lease("10.5.2.0/24", 22, 5)
    c = _lease("10.5.3.0/24", 3, 6)
    diff = w.apply_snapshot(LeaseList([b2, c], revision=6))
    assert {(ev.type, ev.lease.key, ev.lease.attrs.public_ip.packed[-1]) for ev in diff} == {
        (EventType.REMOVED, a.key, 1),
        (EventType.ADDED, b2.key, 22),
        (EventType.ADDED, c.key, 3),
    }
    assert w.apply_snapshot(LeaseList([b2, c], revision=7)) == []
    evs = w.apply_events(
        [
            KeyEvent(key=c.key, deleted=True, lease=None, mod_revision=8),
            KeyEvent(key=own.key, deleted=True, lease=None, mod_revision=9),
            KeyEvent(key="10.5.7.0-24", deleted=True, lease=None, mod_revision=10),
        ]
    )
    assert [(ev.type, ev.lease.attrs) for ev in evs] == [(EventType.REMOVED, c.attrs)]


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(0.1, 5.0)
    delays = [b.next_delay() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.15
    assert all(d <= 5.0 for d in delays)
    assert delays[-1] >= 2.5
    b.reset()
    assert b.next_delay() <= 0.15


async def test_close_ends_running_watches(raw: aetcd.Client, etcd_server: EtcdServer) -> None:
    from flannel.etcd import EtcdClosed

    mgr = make(etcd_server)
    await mgr.connect()
    peers = Peers(mgr.watch_leases(None))
    await peers.until(lambda: len(peers.log) >= 1)
    await mgr.close()
    with pytest.raises(EtcdClosed):
        await asyncio.wait_for(peers.task, 10)
    await mgr.connect()  # a closed manager can be connected again
    assert await mgr.get_config_raw() == CONFIG
    await mgr.close()


async def test_no_event_lost_across_forced_reconnects_and_compaction(
    raw: aetcd.Client, etcd_server: EtcdServer, config: NetworkConfig
) -> None:
    """Random puts/deletes while the watch stream is broken repeatedly (and history is
    compacted behind it): the peer map the events describe always ends equal to etcd."""
    import random

    rng = random.Random(7)
    async with make(etcd_server) as me:
        me._config = config
        peers = Peers(me.watch_leases(None))
        await peers.until(lambda: len(peers.log) >= 1)
        truth: dict[str, int] = {}
        unique: list[str] = []

        def settled() -> bool:
            return {k: int(le.attrs.public_ip.packed[-1]) for k, le in peers.peers.items()} == truth

        async def churn(steps: int, compact: bool) -> None:
            for step in range(steps):
                n = rng.randrange(1, 30)
                name = f"10.5.{n}.0-24"
                if name in truth and rng.random() < 0.4:
                    await raw.delete(key(name))
                    truth.pop(name)
                else:
                    v = rng.randrange(1, 250)
                    await raw.put(key(name), value(v))
                    truth[name] = v
                if step % 20 == 10:
                    await peers.until(settled)  # caught up: the gap below starts right here
                    _, generation = await me.conn.client()
                    await me.conn.reset(generation, "test: break the stream")
                    await asyncio.sleep(0)  # let the watch notice before the next write
                    for _ in range(3):  # keys written once: a lost event cannot be masked
                        fresh = f"10.5.{100 + len(unique)}.0-24"
                        unique.append(fresh)
                        await raw.put(key(fresh), value(9))
                        truth[fresh] = 9
                if compact and step % 20 == 12:
                    head = await raw.get(f"{PREFIX}/config".encode())
                    assert head is not None
                    await raw.compact(head.header.revision)

        await churn(100, compact=False)  # resume from the last revision + 1 must be exact
        await peers.until(settled, limit=30)
        await churn(100, compact=True)  # resume from a compacted revision: relist and diff
        await peers.until(settled, limit=30)
        assert not peers.task.done()
        await peers.stop()
