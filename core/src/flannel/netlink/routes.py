"""Routes a backend owns, kept in the kernel: wanted state, batched writes, reconcile.

A :class:`RouteTable` holds the routes a backend *wants*, keyed by destination. ``sync()``
dumps the kernel's routes of the table once per address family, compares (linear cost),
and writes only the differences in batches: missing or different routes are replaced,
routes carrying our protocol number whose destination is no longer wanted are deleted
(when ``prune`` is set). Nothing changed means no netlink writes at all. Every refused
write comes back as a :class:`RouteError` naming the route and the kernel's reason.

Owned routes are marked with :data:`RTPROT_FLANNEL` (``proto 75`` in ``ip route``; the
number is unassigned in iproute2's ``/etc/iproute2/rt_protos``). A restarted daemon finds
the routes its predecessor left and, after it has the full peer list, removes those of
peers that vanished meanwhile. Add ``75 flannel`` to ``/etc/iproute2/rt_protos.d/`` to see
the name in ``ip route``.

All methods block (one dump plus batched writes); from asyncio call them with
``asyncio.to_thread``. The table opens its netlink socket in the caller's network
namespace (or in ``netns``), so a daemon started with ``ip netns exec`` needs nothing else.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel.netlink._rtnl import (
    RT_TABLE_MAIN,
    KernelRoute,
    RouteMessage,
    RtnlSocket,
)

__all__ = [
    "RTPROT_FLANNEL",
    "Route",
    "RouteError",
    "RouteTable",
    "SyncReport",
    "connected_networks",
]

RTPROT_FLANNEL = 75
"""Route protocol number marking flannel's routes (unused in iproute2's rt_protos)."""

# The metric the kernel gives a route written without one (IPv6 uses 1024).
_METRIC = {4: 0, 6: 1024}

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Route:
    """A wanted route: ``dst via gateway dev oif [onlink]`` in ``table``."""

    dst: IPNetwork
    gateway: IPAddress | None = None
    oif: int = 0
    onlink: bool = False
    table: int = RT_TABLE_MAIN

    def __post_init__(self) -> None:
        if self.gateway is not None and self.gateway.version != self.dst.version:
            raise ValueError(
                f"route {self.dst} has gateway {self.gateway} of another address family: "
                "use a gateway of the destination's family"
            )

    def __str__(self) -> str:
        text = str(self.dst)
        if self.gateway is not None:
            text += f" via {self.gateway}"
        if self.oif:
            text += f" dev #{self.oif}"
        return text + (" onlink" if self.onlink else "")


@dataclass(frozen=True)
class RouteError:
    """The kernel refused to write one route."""

    route: Route
    op: str
    """``replace`` or ``delete``."""
    errno: int
    message: str

    def __str__(self) -> str:
        return f"cannot {self.op} route {self.route}: {self.message} (errno {self.errno})"


@dataclass
class SyncReport:
    """What one ``sync()`` did."""

    replaced: list[Route] = field(default_factory=list)
    """Routes written because they were missing or differed (errors excluded)."""
    deleted: list[Route] = field(default_factory=list)
    """Owned routes removed because no longer wanted."""
    errors: list[RouteError] = field(default_factory=list)
    unchanged: int = 0

    @property
    def writes(self) -> int:
        return len(self.replaced) + len(self.deleted) + len(self.errors)


def _matches(want: Route, have: KernelRoute, protocol: int) -> bool:
    return (
        have.protocol == protocol
        and have.gateway == want.gateway
        and (not want.oif or have.oif == want.oif)
        and have.onlink == want.onlink
    )


class RouteTable:
    """The routes one owner wants, reconciled against one kernel routing table.

    One owner per (namespace, protocol, table): ``sync(prune=True)`` deletes every route
    with our protocol that is not wanted. Thread-safe (one lock around each operation).
    """

    def __init__(
        self,
        *,
        protocol: int = RTPROT_FLANNEL,
        table: int = RT_TABLE_MAIN,
        netns: str | None = None,
    ) -> None:
        if not 5 <= protocol <= 255:
            raise ValueError(
                f"route protocol must be 5..255 (0-4 are the kernel's), got {protocol}"
            )
        self.protocol = protocol
        self.table = table
        self._wanted: dict[IPNetwork, Route] = {}
        self._lock = threading.Lock()
        self._sock = RtnlSocket(netns)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wanted state (no I/O) ----------------------------------------------------------

    @property
    def wanted(self) -> Mapping[IPNetwork, Route]:
        return dict(self._wanted)

    def want(self, route: Route) -> None:
        """Want ``route`` (replacing any wanted route to the same destination)."""
        self._check(route)
        with self._lock:
            self._wanted[route.dst] = route

    def forget(self, dst: IPNetwork) -> None:
        """Stop wanting the route to ``dst``; the next ``sync(prune=True)`` deletes it."""
        with self._lock:
            self._wanted.pop(dst, None)

    def want_only(self, routes: Iterable[Route]) -> None:
        """Make ``routes`` the complete wanted set."""
        new: dict[IPNetwork, Route] = {}
        for route in routes:
            self._check(route)
            new[route.dst] = route
        with self._lock:
            self._wanted = new

    def _check(self, route: Route) -> None:
        if route.table != self.table:
            raise ValueError(
                f"route {route} is for table {route.table} but this RouteTable manages "
                f"table {self.table}: use one RouteTable per table"
            )

    # -- kernel I/O -----------------------------------------------------------------------

    def owned(self) -> list[Route]:
        """Routes in the kernel carrying our protocol (e.g. left by a previous run)."""
        with self._lock:
            return [
                Route(k.dst, k.gateway, k.oif, k.onlink, k.table)
                for family in (socket.AF_INET, socket.AF_INET6)
                for k in self._sock.dump_routes(family, self.table, self.protocol)
            ]

    def sync(self, *, prune: bool = True) -> SyncReport:
        """Make the kernel match the wanted routes: one dump per family, batched writes.

        ``prune`` deletes owned routes whose destination is not wanted; leave it off until
        the wanted set is complete (e.g. before the first full list of peers).
        """
        with self._lock:
            wanted = dict(self._wanted)
            kernel: dict[IPNetwork, list[KernelRoute]] = {}
            for family in (socket.AF_INET, socket.AF_INET6):
                for k in self._sock.dump_routes(family, self.table):
                    if k.priority == _METRIC[k.dst.version] or k.protocol == self.protocol:
                        kernel.setdefault(k.dst, []).append(k)
            report = SyncReport()
            writes: list[tuple[Route, RouteMessage]] = []
            for dst, want in wanted.items():
                have = kernel.get(dst, ())
                metric = _METRIC[dst.version]
                if any(k.priority == metric and _matches(want, k, self.protocol) for k in have):
                    report.unchanged += 1
                    continue
                writes.append((want, self._message("replace", want)))
            if prune:
                for dst, have in kernel.items():
                    if dst in wanted:
                        continue
                    for k in have:
                        if k.protocol == self.protocol:
                            old = Route(k.dst, k.gateway, k.oif, k.onlink, k.table)
                            writes.append((old, self._message("delete", old)))
            if not writes:
                return report
            nacks = {n.index: n for n in self._sock.apply([msg for _, msg in writes])}
            for i, (route, msg) in enumerate(writes):
                nack = nacks.get(i)
                if nack is not None:
                    report.errors.append(RouteError(route, msg.op, nack.errno, nack.message))
                elif msg.op == "replace":
                    report.replaced.append(route)
                else:
                    report.deleted.append(route)
            return report

    def _message(self, op: str, route: Route) -> RouteMessage:
        return RouteMessage(
            op, route.dst, route.gateway, route.oif, self.protocol, route.table, route.onlink
        )

    def connected(self, oif: int) -> list[IPNetwork]:
        """The prefixes configured on interface ``oif`` (its directly reachable segments)."""
        with self._lock:
            return _connected(self._sock, oif)


def _connected(sock: RtnlSocket, oif: int) -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in sock.dump_addrs(family, oif):
            net = addr.network
            if net.version == 6 and net.network_address.is_link_local:
                continue
            nets.append(net)
    return nets


def connected_networks(oif: int, netns: str | None = None) -> list[IPNetwork]:
    """The prefixes configured on interface ``oif`` (link-local IPv6 excluded)."""
    sock = RtnlSocket(netns)
    try:
        return _connected(sock, oif)
    finally:
        sock.close()
