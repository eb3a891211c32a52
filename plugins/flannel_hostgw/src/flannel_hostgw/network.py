"""host-gw's running network: peer leases become routes ``subnet via peer-host dev ext``.

The peers' hosts must share our L2 segment: a peer whose public IP is outside every prefix
configured on the external interface is skipped with a warning naming it (upstream let the
kernel refuse the route and only logged ``network is unreachable``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.backend import BackendConfigError, BackendContext, BackendNetwork
from flannel.events import Event, EventType
from flannel.lease import Lease
from flannel.netlink.routes import Route, RouteTable, SyncReport, network_scope

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
    _peer_routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    """Peer key -> the routes it maps to (what the route table wants for it)."""
    _claims: dict[IPv4Network | IPv6Network, dict[str, Route]] = field(default_factory=dict)
    """Destination -> the peers whose routes want it (normally exactly one)."""
    _connected: list[IPv4Network | IPv6Network] | None = None
    """The external interface's prefixes the routes were computed for."""
    _stale: bool = True
    """Recompute every peer's routes on the next reconcile."""
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
            table=RouteTable(scope=network_scope(ctx.network)),
        )

    @property
    def routes(self) -> RouteTable:
        assert self.table is not None, "HostGWNetwork has no route table"
        return self.table

    # -- events -------------------------------------------------------------------------

    async def handle_events(self, events: Sequence[Event]) -> None:
        """Apply one batch of peer changes.

        The first batch (the full peer list) is a full reconcile with pruning. Later
        batches write only the routes of the peers they name, without dumping the kernel:
        at 10,000 peers a dump per event would cost more than the event itself. The
        reconcile loop still dumps and compares every period to repair drift.
        """
        async with self._lock:
            touched: dict[str, None] = {}
            for event in events:
                key = event.lease.key
                if event.type is EventType.ADDED:
                    self.peers[key] = event.lease
                else:
                    self.peers.pop(key, None)
                    self._warned.pop(key, None)
                touched[key] = None
            connected = await asyncio.to_thread(self.routes.connected, self.ctx.ext_iface.index)
            if not self.synced_once or connected != self._connected:
                self._stale = True
                report = await self._reconcile_locked(connected, prune=True)
                self.synced_once = True
            else:
                want, forget = self._changes(touched, connected)
                report = await asyncio.to_thread(self.routes.apply, want, forget)
        self._log_report(report, "events")

    async def reconcile(self, *, prune: bool, why: str = "reconcile") -> SyncReport:
        """Recompute wanted routes if needed and make the kernel match (one dump, batched
        writes, none when nothing changed)."""
        async with self._lock:
            connected = await asyncio.to_thread(self.routes.connected, self.ctx.ext_iface.index)
            report = await self._reconcile_locked(connected, prune=prune)
        self._log_report(report, why)
        return report

    async def _reconcile_locked(
        self, connected: list[IPv4Network | IPv6Network], *, prune: bool
    ) -> SyncReport:
        if connected != self._connected or self._stale:
            # Reachability of every peer may have changed: recompute all of them.
            self._connected = connected
            fresh: dict[str, tuple[Route, ...]] = {}
            self._claims = {}
            for key, lease in self.peers.items():
                routes = self._routes_for(key, lease, connected)  # reuses unchanged objects
                if routes:
                    fresh[key] = routes
                    for route in routes:
                        self._claim(key, route)
            self._peer_routes = fresh
            self.routes.want_only(next(reversed(c.values())) for c in self._claims.values())
            self._stale = False
        return await asyncio.to_thread(self.routes.sync, prune=prune)

    def _changes(
        self, keys: Iterable[str], connected: Sequence[IPv4Network | IPv6Network]
    ) -> tuple[list[Route], list[IPv4Network | IPv6Network]]:
        """The routes to write and the destinations to drop for the peers ``keys``.

        Cost is proportional to the batch, not to the number of peers. A destination two
        leases claim (e.g. a v4-only and a dual-stack key for one subnet) is routed to the
        most recent claim and dropped only when no lease claims it any more.
        """
        touched: dict[IPv4Network | IPv6Network, None] = {}
        for key in keys:
            old = self._peer_routes.get(key, ())
            lease = self.peers.get(key)
            new = self._routes_for(key, lease, connected) if lease is not None else ()
            if new:
                self._peer_routes[key] = new
            else:
                self._peer_routes.pop(key, None)
            for route in old:
                claims = self._claims.get(route.dst)
                if claims is not None:
                    claims.pop(key, None)
                    if not claims:
                        del self._claims[route.dst]
                touched[route.dst] = None
            for route in new:
                self._claim(key, route)
                touched[route.dst] = None
        want: list[Route] = []
        forget: list[IPv4Network | IPv6Network] = []
        for dst in touched:
            claims = self._claims.get(dst)
            if claims:
                want.append(next(reversed(claims.values())))
            else:
                forget.append(dst)
        return want, forget

    def _claim(self, key: str, route: Route) -> None:
        claims = self._claims.setdefault(route.dst, {})
        claims[key] = route
        if len(claims) > 1:
            self._warn_once(
                key,
                f"peer leases {', '.join(claims)} all claim {route.dst}; routing it via "
                f"{route.gateway} (lease {key}, the latest): delete the stale lease",
            )

    def _routes_for(
        self, key: str, lease: Lease, connected: Sequence[IPv4Network | IPv6Network]
    ) -> tuple[Route, ...]:
        """The routes one peer needs (reusing the previous objects when unchanged)."""
        if key == self.lease.key:
            return ()
        attrs = lease.attrs
        if attrs.backend_type != BACKEND_TYPE:
            self._warn_once(
                key,
                f"ignoring peer lease {key} (public IP {attrs.public_ip}): backend type "
                f"{attrs.backend_type!r} is not {BACKEND_TYPE!r}",
            )
            return ()
        ext = self.ctx.ext_iface
        hops: list[tuple[IPv4Network | IPv6Network, IPv4Address | IPv6Address]] = []
        if lease.subnet is not None and self.lease.subnet is not None:
            hops.append((lease.subnet, attrs.public_ip))
        if (
            lease.ipv6_subnet is not None
            and attrs.public_ipv6 is not None
            and self.lease.ipv6_subnet is not None
        ):
            hops.append((lease.ipv6_subnet, attrs.public_ipv6))
        routes: list[Route] = []
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
        new = tuple(routes)
        old = self._peer_routes.get(key)
        return old if old == new and old is not None else new

    def _warn_once(self, key: str, text: str) -> None:
        if self._warned.get(key) != text:
            self._warned[key] = text
            log.warning(text)

    def _log_report(self, report: SyncReport, why: str) -> None:
        metrics = self.ctx.metrics
        metrics.gauge("hostgw_routes", "routes host-gw wants programmed").set(
            float(len(self.routes))
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
