"""host-gw's running network: peer leases become routes ``subnet via peer-host dev ext``.

The peers' hosts must share our L2 segment: a peer whose public IP is outside every prefix
configured on the external interface is skipped with a warning naming it (upstream let the
kernel refuse the route and only logged ``network is unreachable``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.backend import BackendConfigError, BackendContext, BackendNetwork
from flannel.events import Event, EventType
from flannel.lease import Lease
from flannel.netlink.routes import Route, RouteTable, SyncReport

log = logging.getLogger("flannel.hostgw")

BACKEND_TYPE = "host-gw"
DEFAULT_RECONCILE_INTERVAL = 10.0


@dataclass(frozen=True)
class HostGWOptions:
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL
    """Seconds between reconcile passes (``Backend.ReconcileInterval``; flanneld: 10)."""


def parse_options(backend: Mapping[str, Any]) -> HostGWOptions:
    """Read the ``Backend`` object; keys match case-insensitively as in Go, others ignored."""
    lowered = {str(k).lower(): v for k, v in backend.items()}
    value = lowered.get("reconcileinterval", DEFAULT_RECONCILE_INTERVAL)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise BackendConfigError(
            f"Backend.ReconcileInterval must be a number of seconds in (0, 86400], got "
            f"{value!r}: fix the network config"
        )
    return HostGWOptions(reconcile_interval=float(value))


@dataclass(eq=False)
class HostGWNetwork(BackendNetwork):
    """host-gw state: known peers and the route table they map to."""

    options: HostGWOptions = field(default_factory=HostGWOptions)
    table: RouteTable | None = None
    peers: dict[str, Lease] = field(default_factory=dict)
    synced_once: bool = False
    """True after the first full peer list was applied; pruning starts then."""
    _warned: dict[str, str] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def create(cls, ctx: BackendContext, lease: Lease, options: HostGWOptions) -> HostGWNetwork:
        # Opened here, in the daemon's namespace; worker threads reuse the socket.
        return cls(
            backend_type=BACKEND_TYPE,
            lease=lease,
            mtu=ctx.ext_iface.mtu,
            ctx=ctx,
            options=options,
            table=RouteTable(),
        )

    @property
    def routes(self) -> RouteTable:
        assert self.table is not None, "HostGWNetwork has no route table"
        return self.table

    # -- events -------------------------------------------------------------------------

    async def handle_events(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.type is EventType.ADDED:
                self.peers[event.lease.key] = event.lease
            else:
                self.peers.pop(event.lease.key, None)
                self._warned.pop(event.lease.key, None)
        await self.reconcile(prune=True, why="events")
        self.synced_once = True

    async def reconcile(self, *, prune: bool, why: str = "reconcile") -> SyncReport:
        """Recompute wanted routes from peers and make the kernel match (batched)."""
        async with self._lock:
            connected = await asyncio.to_thread(self.routes.connected, self.ctx.ext_iface.index)
            self.routes.want_only(self._wanted_routes(connected))
            report = await asyncio.to_thread(self.routes.sync, prune=prune)
        self._log_report(report, why)
        return report

    def _wanted_routes(self, connected: Sequence[IPv4Network | IPv6Network]) -> list[Route]:
        ext = self.ctx.ext_iface
        routes: list[Route] = []
        for key, lease in self.peers.items():
            if lease.key == self.lease.key:
                continue
            attrs = lease.attrs
            if attrs.backend_type != BACKEND_TYPE:
                self._warn_once(
                    key,
                    f"ignoring peer lease {key} (public IP {attrs.public_ip}): backend type "
                    f"{attrs.backend_type!r} is not {BACKEND_TYPE!r}",
                )
                continue
            hops: list[tuple[IPv4Network | IPv6Network, IPv4Address | IPv6Address]] = []
            if lease.subnet is not None and self.lease.subnet is not None:
                hops.append((lease.subnet, attrs.public_ip))
            if (
                lease.ipv6_subnet is not None
                and attrs.public_ipv6 is not None
                and self.lease.ipv6_subnet is not None
            ):
                hops.append((lease.ipv6_subnet, attrs.public_ipv6))
            off_segment = []
            for dst, gateway in hops:
                if any(gateway in net for net in connected if net.version == gateway.version):
                    routes.append(Route(dst, gateway, ext.index))
                else:
                    off_segment.append(f"{dst} via {gateway}")
            if off_segment:
                self._warn_once(
                    key,
                    f"skipping peer {key}: its public IP is not on the L2 segment of "
                    f"{ext.name} ({', '.join(str(n) for n in connected) or 'no address'}); "
                    f"host-gw needs every host on one L2 segment (not routed: "
                    f"{'; '.join(off_segment)}). Use vxlan for routed underlays.",
                )
            else:
                self._warned.pop(key, None)
        return routes

    def _warn_once(self, key: str, text: str) -> None:
        if self._warned.get(key) != text:
            self._warned[key] = text
            log.warning(text)

    def _log_report(self, report: SyncReport, why: str) -> None:
        metrics = self.ctx.metrics
        metrics.gauge("hostgw_routes", "routes host-gw wants programmed").set(
            float(len(self.routes.wanted))
        )
        errors = metrics.counter("hostgw_route_errors_total", "route writes the kernel refused")
        for route in report.replaced:
            if why == "reconcile":
                log.info("Route recovered: %s", route)
            else:
                log.debug("route programmed: %s", route)
        for route in report.deleted:
            log.info("removed stale route %s (%s)", route, why)
        for error in report.errors:
            errors.inc()
            log.error("%s; will retry on the next reconcile", error)
        if report.writes:
            log.info(
                "host-gw %s: %d routes written, %d removed, %d errors, %d unchanged",
                why, len(report.replaced), len(report.deleted), len(report.errors),
                report.unchanged,
            )  # fmt: skip

    # -- run loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile every ``ReconcileInterval`` s: restore lost routes, drop stale ones."""
        try:
            while True:
                await asyncio.sleep(self.options.reconcile_interval)
                try:
                    await self.reconcile(prune=self.synced_once)
                except OSError as exc:
                    log.error("host-gw reconcile failed: %s; retrying next period", exc)
        finally:
            # Routes stay: peers keep working across a daemon restart.
            if self.table is not None:
                self.table.close()
