"""The lifecycle of one network on this host, from config to a running backend and back.

``NetworkLifecycle.run()`` loops until cancelled (cancellation is the one stop signal):

1. init, retried with exponential backoff and jitter: read the config (a missing config is
   waited for; a malformed one is fatal at startup, retried later), find the external
   interface, ``register_network`` on the providing plugin (which acquires the lease through
   ``ctx.acquire_lease``), write subnet.env atomically;
2. serve, in one task group: the backend's ``run``, peer event batches fed to
   ``handle_events`` one at a time, and the lease holder (renew at expiry minus the margin,
   retry every minute or sooner near expiry, watch for loss);
3. if the lease is lost or taken, or the backend fails: cancel the backend (its ``finally``
   cleans up) and go back to 1, preferring the same subnet (flanneld v0.20 exits instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannel import health
from flannel.backend import (
    BackendConfigError,
    BackendContext,
    BackendError,
    BackendNetwork,
    ExternalInterface,
)
from flannel.config import ConfigError, NetworkConfig
from flannel.lease import Lease, LeaseAttrs
from flannel.manager import (
    ConfigNotFound,
    LeaseLost,
    PreviousSubnets,
    SubnetManager,
)
from flannel.metrics import Metrics
from flannel.plugins.host import PluginError, PluginHost

__all__ = [
    "Backoff",
    "FatalError",
    "LifecycleSettings",
    "NetworkLifecycle",
    "NetworksReadiness",
    "Readiness",
]

log = logging.getLogger("flannel.network")


class FatalError(RuntimeError):
    """Setup cannot succeed without the operator's help (exit 1 with this one-line message)."""


WriteSubnetEnv = Callable[[NetworkConfig, Lease, int], None]


FindInterface = Callable[[NetworkConfig], Awaitable[ExternalInterface]]
Companion = Callable[[BackendNetwork], Coroutine[Any, Any, None]]


@dataclass
class Readiness(health.Readiness):
    """The facts ``/readyz`` reports (see :class:`flannel.health.Readiness`), kept up to date
    by the lifecycle, plus the current lease and the last error for humans."""

    lease: Lease | None = None
    last_error: str = ""
    ready_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set while the network is up (lease held, subnet.env written, backend running)."""

    @property
    def network_ready(self) -> bool:
        return self.lease_held and self.subnet_env_written and self.backend_running

    def snapshot(self) -> dict[str, Any]:
        lease = self.lease
        ready, reason = self()
        return {
            "ready": ready,
            "reason": reason,
            "lease_held": self.lease_held,
            "subnet_env_written": self.subnet_env_written,
            "backend_running": self.backend_running,
            "subnet": str(lease.subnet) if lease and lease.subnet else None,
            "ipv6_subnet": str(lease.ipv6_subnet) if lease and lease.ipv6_subnet else None,
            "last_error": self.last_error or None,
        }


@dataclass
class NetworksReadiness(Readiness):
    """``/readyz`` in multi-network mode: etcd reached (probe) and every network up."""

    networks: dict[str, Readiness] = field(default_factory=dict)

    @property
    def network_ready(self) -> bool:
        return bool(self.networks) and all(r.network_ready for r in self.networks.values())

    def __call__(self) -> tuple[bool, str]:
        _, base = super().__call__()
        reasons = [r for r in base.split("; ") if r.startswith("etcd")]
        if self.masq_in_place is False:
            reasons.append("masquerade rules not in place")
        if not self.networks:
            reasons.append("no network running")
        for name, net in sorted(self.networks.items()):
            ok, why = net()
            if not ok:
                reasons.append(f"network {name}: {why}")
        return (not reasons, "; ".join(reasons) or "ready")


@dataclass
class Backoff:
    """Exponential backoff with jitter: base * 2**n, capped, times a factor in [0.5, 1]."""

    base: float = 1.0
    cap: float = 30.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class LifecycleSettings:
    renew_margin: float = 3600.0
    """Seconds before expiry at which the lease is renewed."""
    renew_retry: float = 60.0
    """Seconds between renewal attempts after an error (sooner near expiry)."""
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    network_name: str = ""
    state_dir: Path = Path("/run/flannel")
    options: Mapping[str, Any] = field(default_factory=dict)


class _LeaseGone(Exception):
    pass


class NetworkLifecycle:
    """Keeps one network up on this host until cancelled."""

    def __init__(
        self,
        manager: SubnetManager,
        host: PluginHost,
        find_interface: FindInterface,
        write_subnet_env: WriteSubnetEnv,
        *,
        previous: PreviousSubnets | None = None,
        settings: LifecycleSettings | None = None,
        metrics: Metrics | None = None,
        readiness: Readiness | None = None,
        on_ready: Callable[[BackendNetwork], None] | None = None,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.manager = manager
        self.host = host
        self.find_interface = find_interface
        self.write_subnet_env = write_subnet_env
        self.previous = previous
        self.settings = settings or LifecycleSettings()
        self.metrics = metrics or Metrics()
        self.readiness = readiness or Readiness()
        self.on_ready = on_ready
        self.companions = list(companions)
        self.network: BackendNetwork | None = None
        self.generation = 0
        """How many times the network was (re)initialised; 1 after the first init."""
        m = self.metrics
        self._m_acquired = m.counter("lease_acquisitions_total", "Leases acquired")
        self._m_renewed = m.counter("lease_renewals_total", "Lease renewals by result")
        self._m_lost = m.counter("lease_lost_total", "Leases lost or taken over")
        self._m_init_fail = m.counter("network_init_failures_total", "Failed initialisations")
        self._m_batches = m.counter("peer_event_batches_total", "Peer event batches handled")
        self._m_events = m.counter("events_handled_total", "Peer events handled, by type")
        self._m_expiry = m.gauge("lease_expiration_timestamp_seconds", "Own lease expiry")

    # -- top level ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Init, serve, and re-init after a loss or failure, until cancelled."""
        backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap)
        try:
            while True:
                network = await self._init(backoff)
                up_since = time.monotonic()
                try:
                    await self._serve(network)
                except* Exception as group:
                    self._m_init_fail.inc()
                    for exc in group.exceptions:
                        self._note_error(f"network stopped: {_one_line(exc)}", exc)
                else:
                    self._m_lost.inc()
                    log.warning(
                        "lease %s was lost or taken by another host: re-acquiring",
                        network.lease.key,
                    )
                self._down()
                self.previous = PreviousSubnets(network.lease.subnet, network.lease.ipv6_subnet)
                if time.monotonic() - up_since > 2 * self.settings.backoff_cap:
                    backoff.reset()  # it ran well for a while: start over with short delays
                await asyncio.sleep(backoff.next())
        finally:
            self._down()

    def _down(self) -> None:
        r = self.readiness
        r.lease_held = r.backend_running = False
        r.ready_event.clear()
        self.network = None

    def _note_error(self, message: str, exc: BaseException | None = None) -> None:
        self.readiness.last_error = message
        debug = log.isEnabledFor(logging.DEBUG)
        log.error("%s", message, exc_info=exc if debug and exc is not None else None)

    # -- init --------------------------------------------------------------------------------

    async def _init(self, backoff: Backoff) -> BackendNetwork:
        waiting_logged = False
        while True:
            try:
                config = await self.manager.get_network_config()
                self.readiness.etcd_reached()
                network = await self._register(config)
            except ConfigNotFound as exc:
                self.readiness.etcd_reached()  # etcd answered: there is just no config yet
                if not waiting_logged:
                    log.warning("waiting for the network config: %s", exc)
                    waiting_logged = True
            except (ConfigError, BackendConfigError) as exc:
                if self.generation == 0:
                    raise FatalError(f"invalid network config: {exc}") from exc
                self._note_error(f"invalid network config (fix it in etcd): {exc}")
            except PluginError as exc:
                if self.generation == 0:
                    raise FatalError(str(exc)) from exc
                self._note_error(str(exc))
            except FatalError as exc:
                if self.generation == 0:
                    raise
                self._note_error(str(exc))
            except Exception as exc:
                self._m_init_fail.inc()
                self._note_error(f"network setup failed, will retry: {_one_line(exc)}", exc)
            else:
                return network
            await asyncio.sleep(backoff.next())

    async def _register(self, config: NetworkConfig) -> BackendNetwork:
        info = self.host.provider(config.backend_type)
        ext = await self.find_interface(config)
        acquired: list[Lease] = []

        async def acquire_lease(
            *, backend_type: str, backend_data: Any = None, backend_v6_data: Any = None
        ) -> Lease:
            if acquired:
                raise BackendError(f"{info.label} called acquire_lease twice")
            attrs = LeaseAttrs(
                public_ip=ext.ext_addr or ext.iface_addr or LeaseAttrs().public_ip,
                public_ipv6=(ext.ext_v6_addr or ext.iface_v6_addr) if config.enable_ipv6 else None,
                backend_type=backend_type,
                backend_data=backend_data,
                backend_v6_data=backend_v6_data,
            )
            lease = await self.manager.acquire_lease(config, attrs, self.previous)
            self.readiness.etcd_reached()
            acquired.append(lease)
            self._m_acquired.inc()
            log.info("acquired lease %s (public IP %s)", _subnets(lease), attrs.public_ip)
            return lease

        ctx = BackendContext(
            backend_type=config.backend_type,
            network=config,
            ext_iface=ext,
            acquire_lease=acquire_lease,
            metrics=self.metrics,
            network_name=self.settings.network_name,
            state_dir=self.settings.state_dir,
            options=self.settings.options,
        )
        network = await self.host.register_network(config.backend_type, ctx)
        if not acquired:
            raise BackendError(f"{info.label} returned a network without calling acquire_lease")
        self.write_subnet_env(config, network.lease, network.mtu)
        self.generation += 1
        self.network = network
        r = self.readiness
        r.lease, r.lease_held, r.subnet_env_written = network.lease, True, True
        self._m_expiry.set(network.lease.expiration or 0.0)
        log.info(
            "network %s: backend %s, subnet %s, MTU %d",
            self.settings.network_name or "default",
            config.backend_type,
            _subnets(network.lease),
            network.mtu,
        )
        return network

    # -- serve -------------------------------------------------------------------------------

    async def _serve(self, network: BackendNetwork) -> None:
        """Run the backend, feed events and hold the lease; return when the lease is lost."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._run_backend(network), name="backend-run")
                tg.create_task(self._feed_events(network), name="peer-events")
                for companion in self.companions:
                    tg.create_task(companion(network))
                tg.create_task(self._hold_lease(network), name="lease-holder")
        except* _LeaseGone:
            pass

    async def _run_backend(self, network: BackendNetwork) -> None:
        self.readiness.backend_running = True
        self.readiness.ready_event.set()
        if self.on_ready is not None:
            self.on_ready(network)
        try:
            await self.host.run(network)
        finally:
            network.stopped.set()

    async def _feed_events(self, network: BackendNetwork) -> None:
        await asyncio.sleep(0)  # let run() start first, as the hook contract promises
        watch = self.manager.watch_leases(network.lease)
        async with _closing(watch):
            async for batch in watch:
                self.readiness.etcd_reached()
                if batch:
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("peer events: %s", " ".join(
                            ("+" if e.type.value == "added" else "-") + _subnets(e.lease)
                            for e in batch
                        ))  # fmt: skip
                    await self.host.handle_events(network, batch)
                    self._m_batches.inc()
                    for event in batch:
                        self._m_events.inc(type=event.type.value)
        raise BackendError("the peer lease watch ended unexpectedly")

    async def _hold_lease(self, network: BackendNetwork) -> None:
        lease = network.lease
        renew_at = self._renew_time(lease)
        while True:
            if await self._lost_within(lease, renew_at - time.time()):
                network.stop_reason = "lease_lost"  # run() is cancelled next: tell it why
                raise _LeaseGone()
            try:
                lease = await self.manager.renew_lease(lease)
            except LeaseLost:
                network.stop_reason = "lease_lost"
                raise _LeaseGone() from None
            except Exception as exc:
                self._m_renewed.inc(result="error")
                delay = self._retry_delay(lease)
                log.warning("renewing lease %s failed (retrying in %.0f s): %s",
                            lease.key, delay, _one_line(exc))  # fmt: skip
                renew_at = time.time() + delay
                continue
            self.readiness.etcd_reached()
            self._m_renewed.inc(result="ok")
            self._m_expiry.set(lease.expiration or 0.0)
            network.lease = lease
            self.readiness.lease = lease
            renew_at = self._renew_time(lease)
            log.info("renewed lease %s until %s", lease.key, _when(lease.expiration))

    def _renew_time(self, lease: Lease) -> float:
        if lease.expiration is None:  # a reservation never expires
            return float("inf")
        if not math.isfinite(lease.expiration):  # expiry unknown: renew soon to learn it
            return time.time() + self.settings.renew_retry
        return lease.expiration - self.settings.renew_margin

    def _retry_delay(self, lease: Lease) -> float:
        if lease.expiration is None:
            return self.settings.renew_retry
        left = lease.expiration - time.time()
        return max(1.0, min(self.settings.renew_retry, left / 4))

    async def _lost_within(self, lease: Lease, seconds: float) -> bool:
        """Wait up to ``seconds`` for the lease to be lost; True if it was."""
        deadline = time.monotonic() + max(0.0, seconds) if seconds != float("inf") else None
        while True:
            try:
                async with asyncio.timeout_at(_loop_deadline(deadline)):
                    await self.manager.wait_lease_lost(lease)
                return True
            except TimeoutError:
                return False
            except Exception as exc:
                log.warning("watching own lease %s failed: %s", lease.key, _one_line(exc))
                pause = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if pause <= 0:
                    return False
                await asyncio.sleep(pause)


def _loop_deadline(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


@contextlib.asynccontextmanager
async def _closing(it: AsyncIterator[Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def _subnets(lease: Lease) -> str:
    parts = [str(s) for s in (lease.subnet, lease.ipv6_subnet) if s is not None]
    return " + ".join(parts) or "(none)"


def _when(expiration: float | None) -> str:
    if expiration is None:
        return "never (reservation)"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expiration))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
