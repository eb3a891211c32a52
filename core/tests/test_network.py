"""Network lifecycle logic against an in-memory subnet manager (pure logic; etcd: test_daemon)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from flannel.backend import BackendContext, BackendNetwork, ExternalInterface
from flannel.config import ConfigError, NetworkConfig, parse_config
from flannel.events import Event
from flannel.hookspecs import hookimpl
from flannel.lease import Lease, LeaseAttrs
from flannel.manager import ConfigNotFound, LeaseLost, PreviousSubnets, SubnetManagerError
from flannel.network import FatalError, LifecycleSettings, NetworkLifecycle
from flannel.plugins.host import PluginHost
from flannel.subnetenv import read_subnet_env, write_subnet_env

pytestmark = pytest.mark.timeout(30)

EXT = ExternalInterface(
    name="eth0", index=2, mtu=1500, iface_addr=IPv4Address("198.18.0.1"),
    ext_addr=IPv4Address("198.18.0.1"),
)  # fmt: skip


def config(backend: str = "fake", network: str = "10.244.0.0/16") -> NetworkConfig:
    return parse_config(f'{{"Network":"{network}","Backend":{{"Type":"{backend}"}}}}')


class FakeManager:
    """Just enough SubnetManager to drive the lifecycle; leases live in a dict."""

    def __init__(self, cfg: NetworkConfig | Exception | list[NetworkConfig | Exception]) -> None:
        self.configs = cfg if isinstance(cfg, list) else [cfg]
        self.acquired: list[tuple[LeaseAttrs, PreviousSubnets | None]] = []
        self.renewed: list[Lease] = []
        self.renew_errors: list[Exception] = []
        self.next_subnet = 5
        self.ttl = 3600.0
        self.batches: asyncio.Queue[Sequence[Event]] = asyncio.Queue()
        self.lost: dict[str, asyncio.Event] = {}
        self.watchers: list[Lease | None] = []

    async def get_network_config(self) -> NetworkConfig:
        item = self.configs.pop(0) if len(self.configs) > 1 else self.configs[0]
        if isinstance(item, Exception):
            raise item
        return item

    async def acquire_lease(
        self, config: NetworkConfig, attrs: LeaseAttrs, previous: PreviousSubnets | None = None
    ) -> Lease:
        self.acquired.append((attrs, previous))
        if previous is not None and previous.subnet is not None:
            subnet = previous.subnet
        else:
            subnet = IPv4Network(f"10.244.{self.next_subnet}.0/24")
            self.next_subnet += 1
        lease = Lease(subnet=subnet, attrs=attrs, expiration=time.time() + self.ttl)
        self.lost[lease.key] = asyncio.Event()
        return lease

    async def renew_lease(self, lease: Lease) -> Lease:
        if self.renew_errors:
            raise self.renew_errors.pop(0)
        if self.lost[lease.key].is_set():
            raise LeaseLost(f"lease {lease.key} is gone")
        renewed = Lease(lease.subnet, lease.attrs, expiration=time.time() + self.ttl)
        self.renewed.append(renewed)
        return renewed

    async def watch_leases(self, own: Lease | None) -> AsyncIterator[Sequence[Event]]:
        self.watchers.append(own)
        while True:
            yield await self.batches.get()

    async def wait_lease_lost(self, lease: Lease) -> None:
        await self.lost[lease.key].wait()

    async def list_leases(self) -> list[Lease]:
        return []

    async def reserve(self, subnet: Any, public_ip: Any) -> Lease:
        raise NotImplementedError

    async def unreserve(self, subnet: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class FakeBackend:
    """A plugin object that records every hook call."""

    def __init__(self, types: Sequence[str] = ("fake",)) -> None:
        self.types = list(types)
        self.registered: list[BackendContext] = []
        self.batches: list[Sequence[Event]] = []
        self.runs = 0
        self.cleanups = 0
        self.fail_run: Exception | None = None
        self.fail_events: Exception | None = None
        self.runs_before_batch: list[int] = []
        self.batch_seen = asyncio.Event()
        self.stop_reasons: list[str] = []

    @hookimpl
    def backend_types(self) -> Sequence[str]:
        return self.types

    @hookimpl
    async def register_network(self, backend_type: str, ctx: BackendContext) -> BackendNetwork:
        self.registered.append(ctx)
        lease = await ctx.acquire_lease(backend_type=backend_type, backend_data={"K": 1})
        return BackendNetwork(backend_type=backend_type, lease=lease, mtu=1450, ctx=ctx)

    @hookimpl
    async def run(self, network: BackendNetwork) -> None:
        self.runs += 1
        try:
            if self.fail_run is not None:
                exc, self.fail_run = self.fail_run, None
                raise exc
            await asyncio.Event().wait()
        finally:
            self.cleanups += 1
            self.stop_reasons.append(network.stop_reason)

    @hookimpl
    async def handle_events(self, network: BackendNetwork, events: Sequence[Event]) -> None:
        await asyncio.sleep(0.001)  # a slow handler must still see batches strictly in order
        self.runs_before_batch.append(self.runs)
        if self.fail_events is not None:
            exc, self.fail_events = self.fail_events, None
            raise exc
        self.batches.append(events)
        self.batch_seen.set()


def make(
    tmp_path: Path, manager: FakeManager, backend: FakeBackend | None = None, **settings: Any
) -> tuple[NetworkLifecycle, FakeBackend, list[str]]:
    backend = backend or FakeBackend()
    host = PluginHost()
    host.add("fake", backend, distribution="flannel-fake", version="1")
    written: list[str] = []
    env_file = tmp_path / "subnet.env"

    def write(cfg: NetworkConfig, lease: Lease, mtu: int) -> None:
        write_subnet_env(env_file, cfg, lease, mtu, False)
        written.append(env_file.read_text())

    async def find(cfg: NetworkConfig) -> ExternalInterface:
        return EXT

    opts = {"backoff_base": 0.01, "backoff_cap": 0.05, **settings}
    lifecycle = NetworkLifecycle(
        manager,
        host,
        find,
        write,
        settings=LifecycleSettings(**opts),  # type: ignore[arg-type]
    )
    return lifecycle, backend, written


async def until(predicate: Any, what: str) -> None:
    """Poll a condition; the test timeout is only a safety net."""
    while not predicate():  # noqa: ASYNC110 - the fakes have no event for every condition
        await asyncio.sleep(0.005)


def peer(n: int) -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"), LeaseAttrs(IPv4Address(f"198.18.0.{n}")))


async def test_init_writes_env_and_feeds_batches_in_order(tmp_path: Path) -> None:
    manager = FakeManager(config())
    lifecycle, backend, written = make(tmp_path, manager)
    task = asyncio.create_task(lifecycle.run())
    await lifecycle.readiness.ready_event.wait()
    assert lifecycle.readiness.network_ready and lifecycle.readiness()[0]
    attrs, _ = manager.acquired[0]
    assert attrs.public_ip == IPv4Address("198.18.0.1")
    assert attrs.backend_type == "fake" and attrs.backend_data == {"K": 1}
    assert written == [
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    ]
    batches = [[Event.added(peer(n))] for n in range(10, 20)] + [[Event.removed(peer(10))]]
    for batch in batches:
        manager.batches.put_nowait(batch)
    await until(lambda: len(backend.batches) == len(batches), "all batches")
    assert backend.batches == batches
    assert backend.runs_before_batch[0] == 1  # run() started before the first batch
    assert manager.watchers[0] is not None and manager.watchers[0].key == "10.244.5.0-24"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancellation_cleans_up_backend(tmp_path: Path) -> None:
    manager = FakeManager(config())
    lifecycle, backend, _ = make(tmp_path, manager)
    task = asyncio.create_task(lifecycle.run())
    await lifecycle.readiness.ready_event.wait()
    await until(lambda: backend.runs == 1, "run started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cleanups == 1
    assert backend.stop_reasons == [""]  # a plain shutdown: the lease (and cloud routes) stay
    assert not lifecycle.readiness.network_ready and not lifecycle.readiness.lease_held
    assert lifecycle.network is None


async def test_lost_lease_is_reacquired_in_process(tmp_path: Path) -> None:
    manager = FakeManager(config())
    lifecycle, backend, written = make(tmp_path, manager)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: backend.runs == 1, "first run")
    first = lifecycle.network
    assert first is not None
    manager.lost[first.lease.key].set()
    await until(lambda: lifecycle.generation == 2 and backend.runs == 2, "second run")
    assert backend.cleanups == 1  # the first run was cancelled before re-registering
    assert backend.stop_reasons == ["lease_lost"]  # ... and told why
    assert len(backend.registered) == 2
    # the lost subnet is asked for again (PreviousSubnets hint)
    assert manager.acquired[1][1] == PreviousSubnets(first.lease.subnet, None)
    assert len(written) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cleanups == 2


async def test_renews_before_expiry_and_retries_errors(tmp_path: Path) -> None:
    manager = FakeManager(config())
    manager.ttl = 3.0
    manager.renew_errors = [SubnetManagerError("etcd down")]
    # margin close to the TTL: renewals come quickly
    lifecycle, _backend, _ = make(tmp_path, manager, renew_margin=2.9, renew_retry=0.05)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: len(manager.renewed) >= 2, "two renewals")
    assert lifecycle.network is not None
    assert lifecycle.network.lease in manager.renewed  # the network holds the renewed lease
    assert lifecycle.generation == 1  # an error during renewal is not a loss
    assert lifecycle.metrics.counter("lease_renewals_total").get(result="error") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_renew_finding_lease_gone_reacquires(tmp_path: Path) -> None:
    manager = FakeManager(config())
    manager.renew_errors = [LeaseLost("taken by 198.18.0.9")]
    manager.ttl = 3.0
    lifecycle, _backend, _ = make(tmp_path, manager, renew_margin=2.9)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: lifecycle.generation == 2, "re-init")
    assert lifecycle.metrics.counter("lease_lost_total").get() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_missing_config_is_waited_for(tmp_path: Path) -> None:
    manager = FakeManager([ConfigNotFound("no config"), ConfigNotFound("no config"), config()])
    lifecycle, _backend, written = make(tmp_path, manager)
    task = asyncio.create_task(lifecycle.run())
    await lifecycle.readiness.ready_event.wait()
    assert len(written) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_malformed_config_at_startup_is_fatal_and_writes_nothing(tmp_path: Path) -> None:
    manager = FakeManager(ConfigError("SubnetLen 40 is not valid"))
    lifecycle, backend, written = make(tmp_path, manager)
    with pytest.raises(FatalError, match="invalid network config: SubnetLen 40"):
        await lifecycle.run()
    assert manager.acquired == [] and written == [] and backend.registered == []
    assert not (tmp_path / "subnet.env").exists()


async def test_unknown_backend_is_fatal_with_install_hint(tmp_path: Path) -> None:
    manager = FakeManager(config(backend="vxlan"))
    lifecycle, _, written = make(tmp_path, manager)
    with pytest.raises(
        FatalError, match=r"unknown backend type 'vxlan'.*pip install flannel-vxlan"
    ):
        await lifecycle.run()
    assert manager.acquired == [] and written == []


async def test_failing_backend_run_is_reinitialised(tmp_path: Path) -> None:
    manager = FakeManager(config())
    backend = FakeBackend()
    backend.fail_run = RuntimeError("device vanished")
    lifecycle, _, _written = make(tmp_path, manager, backend)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: backend.runs == 2, "second run")
    assert lifecycle.generation == 2 and backend.cleanups == 1
    assert "device vanished" in lifecycle.readiness.last_error
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_transient_acquire_errors_are_retried(tmp_path: Path) -> None:
    manager = FakeManager(config())
    calls = 0
    real = manager.acquire_lease

    async def flaky(*args: Any, **kw: Any) -> Lease:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise SubnetManagerError("etcd unavailable")
        return await real(*args, **kw)

    manager.acquire_lease = flaky  # type: ignore[method-assign]
    lifecycle, _backend, written = make(tmp_path, manager)
    task = asyncio.create_task(lifecycle.run())
    await lifecycle.readiness.ready_event.wait()
    assert calls == 3 and len(written) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_previous_subnet_env_is_offered(tmp_path: Path) -> None:
    manager = FakeManager(config())
    lifecycle, _, _ = make(tmp_path, manager)
    env = tmp_path / "old.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.77.1/24\n")
    lifecycle.previous = read_subnet_env(env).previous
    task = asyncio.create_task(lifecycle.run())
    await lifecycle.readiness.ready_event.wait()
    assert lifecycle.network is not None
    assert lifecycle.network.lease.subnet == IPv4Network("10.244.77.0/24")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_failing_event_handler_reinitialises_and_relists(tmp_path: Path) -> None:
    manager = FakeManager(config())
    backend = FakeBackend()
    backend.fail_events = RuntimeError("netlink said no")
    lifecycle, _, _ = make(tmp_path, manager, backend)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: backend.runs == 1, "first run")
    manager.batches.put_nowait([Event.added(peer(10))])
    # re-initialised, with a fresh watch (whose first batch is the full list)
    await until(lambda: lifecycle.generation == 2 and len(manager.watchers) == 2, "re-init")
    assert backend.cleanups == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_companions_run_with_the_network_and_stop_with_it(tmp_path: Path) -> None:
    manager = FakeManager(config())
    started: list[str] = []
    stopped: list[str] = []

    async def companion(network: BackendNetwork) -> None:
        started.append(network.lease.key)
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(network.lease.key)

    lifecycle, _, _ = make(tmp_path, manager)
    lifecycle.companions.append(companion)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: len(started) == 1, "companion started")
    assert lifecycle.network is not None
    manager.lost[lifecycle.network.lease.key].set()
    await until(lambda: len(started) == 2, "companion restarted after re-init")
    assert stopped == started[:1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped == started


async def test_config_turned_invalid_after_start_is_retried_not_fatal(tmp_path: Path) -> None:
    manager = FakeManager([config(), ConfigError("SubnetLen 40 is not valid"), config()])
    lifecycle, backend, _ = make(tmp_path, manager)
    task = asyncio.create_task(lifecycle.run())
    await until(lambda: backend.runs == 1, "first run")
    assert lifecycle.network is not None
    manager.lost[lifecycle.network.lease.key].set()
    await until(lambda: lifecycle.generation == 2, "re-init once the config is valid again")
    assert "invalid network config (fix it in etcd): SubnetLen 40" in (
        lifecycle.readiness.last_error
    )
    assert lifecycle.readiness.snapshot()["subnet"] == "10.244.5.0/24"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
