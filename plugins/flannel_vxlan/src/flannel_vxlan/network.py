"""A running vxlan network: peer events in, kernel entries out, a reconcile loop.

The first event batch (every known peer) is a full sync: neighbours, FDB entries and
routes are dumped once, stale ones (peers that vanished while we were down) are deleted
and missing ones written in batches. Later batches only touch the peers they name.
The reconcile loop repeats the full pass every ``ReconcileInterval`` seconds, but only
when a :class:`~flannel.netlink.changes.KernelChangeWatch` saw the kernel change something
on our devices or in our routes (and at least every 30th pass); it writes nothing when the
kernel already matches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from flannel.backend import BackendContext, BackendNetwork
from flannel.events import Event, EventType
from flannel.lease import Lease
from flannel.netlink.changes import KernelChangeWatch
from flannel.netlink.neigh import NeighTable, RtnlSocket
from flannel.netlink.routes import RouteTable, network_scope
from flannel_vxlan.device import Device
from flannel_vxlan.options import VxlanOptions
from flannel_vxlan.plan import (
    BACKEND_TYPE,
    PeerDataError,
    PeerPlan,
    PeerTarget,
    direct_plan,
    peer_targets,
    vxlan_plan,
)
from flannel_vxlan.sync import PlanId, Programmer, SyncReport
from flannel_vxlan.underlay import on_link_oifs

__all__ = ["VxlanNetwork"]

log = logging.getLogger("flannel.vxlan")
T = TypeVar("T")


@dataclass(eq=False)
class VxlanNetwork(BackendNetwork):
    """vxlan state: our devices, the known peers and what they map to in the kernel."""

    options: VxlanOptions = field(default_factory=VxlanOptions)
    devices: dict[int, Device] = field(default_factory=dict)
    """Address family (4/6) -> our vxlan device."""
    programmer: Programmer | None = None
    peers: dict[str, Lease] = field(default_factory=dict)
    synced_once: bool = False
    _warned: dict[str, str] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _busy: asyncio.Future[object] | None = None
    _dirty: bool = False
    """An event batch failed half-way: the next reconcile rebuilds every plan from peers."""

    @classmethod
    def create(
        cls,
        ctx: BackendContext,
        lease: Lease,
        options: VxlanOptions,
        devices: dict[int, Device],
        mtu: int,
    ) -> VxlanNetwork:
        # Sockets open here, in the daemon's namespace; worker threads use them in turn.
        scope = network_scope(ctx.network)
        indexes = {f: d.index for f, d in devices.items()}
        programmer = Programmer(
            NeighTable(RtnlSocket()),
            RouteTable(scope=scope),
            indexes,
            KernelChangeWatch(indexes.values(), scope=scope),
        )
        return cls(
            backend_type=BACKEND_TYPE,
            lease=lease,
            mtu=mtu,
            ctx=ctx,
            options=options,
            devices=devices,
            programmer=programmer,
        )

    @property
    def kernel(self) -> Programmer:
        assert self.programmer is not None, "VxlanNetwork has no programmer"
        return self.programmer

    async def _in_thread(self, func: Callable[[], T]) -> T:
        """Run blocking netlink work; ``close`` waits for it so sockets are never yanked."""
        future = asyncio.ensure_future(asyncio.to_thread(func))
        self._busy = future  # type: ignore[assignment]
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._busy = None

    # -- plans --------------------------------------------------------------------------

    def _targets(self, leases: Sequence[Lease]) -> list[PeerTarget]:
        targets: list[PeerTarget] = []
        for lease in leases:
            try:
                targets += peer_targets(lease, 4 in self.devices, 6 in self.devices)
            except PeerDataError as exc:
                self._warn_once(lease.key, f"ignoring peer: {exc}")
        return targets

    def _plans(self, targets: Sequence[PeerTarget]) -> list[PeerPlan]:
        """Blocking when DirectRouting is on (one batched route lookup)."""
        direct: dict[IPv4Address | IPv6Address, int] = {}
        if self.options.direct_routing and targets:
            direct = on_link_oifs(self.kernel.neigh.sock, [t.public_ip for t in targets])
            if self.kernel.watch is not None:
                # Routes via these devices vanish unannounced when the device goes down.
                self.kernel.watch.links.update(direct.values())
        plans = []
        for target in targets:
            oif = direct.get(target.public_ip)
            if oif is not None:
                plans.append(direct_plan(target, oif))
            else:
                plans.append(vxlan_plan(target, self.devices[target.family].index))
        return plans

    # -- events -------------------------------------------------------------------------

    async def handle_events(self, events: Sequence[Event]) -> None:
        async with self._lock:
            touched: dict[str, Lease | None] = {}
            for event in events:
                lease = event.lease
                key = lease.key
                if key == self.lease.key:
                    continue
                if event.type is EventType.ADDED and lease.attrs.backend_type == BACKEND_TYPE:
                    self.peers[key] = lease
                    touched[key] = lease
                    self._warned.pop(key, None)
                    continue
                if event.type is EventType.ADDED:
                    self._warn_once(
                        key,
                        f"ignoring peer lease {key} (public IP {lease.attrs.public_ip}): backend "
                        f"type {lease.attrs.backend_type!r} is not {BACKEND_TYPE!r}",
                    )
                else:
                    self._warned.pop(key, None)
                self.peers.pop(key, None)
                touched[key] = None
            if not self.synced_once:
                targets = self._targets(list(self.peers.values()))
                plans = await self._in_thread(lambda: self._plans(targets))
                try:
                    report = await self._in_thread(lambda: self.kernel.replace_all(plans))
                except OSError as exc:
                    # The wanted set is installed; the reconcile loop finishes the job.
                    log.error("vxlan initial sync failed: %s; retrying on reconcile", exc)
                    return
                finally:
                    self.synced_once = True
                self._log(report, "initial sync")
                return
            live = [lease for lease in touched.values() if lease is not None]
            targets = self._targets(live)
            removed: list[PlanId] = [(key, fam) for key in touched for fam in (4, 6)]

            def apply() -> SyncReport:
                plans = self._plans(targets)
                ids = {p.plan_id for p in plans}
                return self.kernel.apply_changes(plans, [i for i in removed if i not in ids])

            try:
                report = await self._in_thread(apply)
            except OSError as exc:
                self._dirty = True
                log.error("vxlan could not apply peer events: %s; retrying on reconcile", exc)
                return
            self._log(report, "events")

    # -- reconcile loop -----------------------------------------------------------------

    async def reconcile(self) -> SyncReport | None:
        """One full pass (after the first peer list arrived); None before that."""
        async with self._lock:
            if not self.synced_once:
                return None
            if self._dirty:
                targets = self._targets(list(self.peers.values()))
                report = await self._in_thread(
                    lambda: self.kernel.replace_all(self._plans(targets))
                )
                self._dirty = False
            else:
                maybe = await self._in_thread(self.kernel.periodic)
                if maybe is None:  # the kernel reported no change that concerns us
                    return SyncReport()
                report = maybe
        self._log(report, "reconcile")
        return report

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.options.reconcile_interval)
                try:
                    await self.reconcile()
                except OSError as exc:
                    log.error("vxlan reconcile failed: %s; retrying next period", exc)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close our sockets (devices and entries stay: peers keep working across restarts)."""
        busy = self._busy
        if busy is not None and not busy.done():
            await asyncio.wait([busy])
        if self.programmer is not None:
            self.programmer.neigh.close()
            self.programmer.routes.close()
            if self.programmer.watch is not None:
                self.programmer.watch.close()
            self.programmer = None

    # -- reporting ----------------------------------------------------------------------

    def _warn_once(self, key: str, text: str) -> None:
        if self._warned.get(key) != text:
            self._warned[key] = text
            log.warning(text)

    def _log(self, report: SyncReport, why: str) -> None:
        metrics = self.ctx.metrics
        metrics.gauge("vxlan_peers", "peer subnets programmed by vxlan").set(
            float(len(self.kernel.plans) - len(self.kernel.pending))
        )
        errors = metrics.counter("vxlan_errors_total", "vxlan entries the kernel refused")
        for plan_id, why_failed in report.failed.items():
            errors.inc()
            log.error("peer %s (IPv%d) not programmed: %s; retrying on reconcile", *plan_id,
                      why_failed)  # fmt: skip
        for error in report.entry_errors:
            errors.inc()
            log.error("%s", error)
        level = logging.INFO if why == "reconcile" else logging.DEBUG
        for plan in report.programmed:
            log.log(level, "peer %s (IPv%d) programmed (%s, %s)", plan.key, plan.family,
                    "direct route" if plan.direct else "vxlan", why)  # fmt: skip
        for entry in report.removed:
            log.info("removed stale %s (%s)", entry, why)
        for route in report.routes.deleted:
            log.info("removed stale route %s (%s)", route, why)
        if report.writes or why == "initial sync":
            log.info(
                "vxlan %s: %d peers known, %d peer families programmed, %d failed, %d entries "
                "removed, %d routes written, %d routes removed",
                why, len(self.peers), len(report.programmed), len(report.failed),
                len(report.removed), len(report.routes.replaced), len(report.routes.deleted),
            )  # fmt: skip
