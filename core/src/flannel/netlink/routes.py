"""Routes a backend owns, kept in the kernel: wanted state, batched writes, reconcile.

A :class:`RouteTable` holds the routes a backend *wants*, keyed by destination. ``sync()``
dumps the kernel's routes of the table once per address family, compares (linear cost),
and writes only the differences in batches: missing or different routes are replaced,
routes carrying our protocol number whose destination is no longer wanted are deleted
(when ``prune`` is set). Nothing changed means no netlink writes at all. Every refused
write comes back as a :class:`RouteError` naming the route and the kernel's reason.
``apply()`` is the event path: it writes only the routes named, against an in-memory view
of what this table programmed, with no dump; the periodic ``sync()`` repairs any drift.

Owned routes are marked with :data:`RTPROT_FLANNEL` (``proto 75`` in ``ip route``; the
number is unassigned in iproute2's ``/etc/iproute2/rt_protos``). A restarted daemon finds
the routes its predecessor left and, after it has the full peer list, removes those of
peers that vanished meanwhile. Add ``75 flannel`` to ``/etc/iproute2/rt_protos.d/`` to see
the name in ``ip route``. Every flannel backend uses protocol 75, so a table given a
``scope`` (its network's CIDRs, see :func:`network_scope`) prunes only inside it: several
networks on one host (two daemons, or ``--networks``) leave each other's routes alone.

All methods block (one dump plus batched writes); from asyncio call them with
``asyncio.to_thread``. The table opens its netlink socket in the caller's network
namespace (or in ``netns``), so a daemon started with ``ip netns exec`` needs nothing else.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from flannel.netlink._rtnl import (
    RT_TABLE_MAIN,
    KernelRoute,
    RouteMessage,
    RtnlSocket,
    decode_route,
    expected_dump_body,
)

__all__ = [
    "RTPROT_FLANNEL",
    "Route",
    "RouteError",
    "RouteTable",
    "SyncReport",
    "connected_networks",
    "network_scope",
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


_Index = tuple[dict[bytes, "Route"], list["Route"]]


class RouteTable:
    """The routes one owner wants, reconciled against one kernel routing table.

    Without ``scope`` there is one owner per (namespace, protocol, table):
    ``sync(prune=True)`` deletes every route with our protocol that is not wanted. With
    ``scope`` (the network's CIDRs, IPv4 and IPv6) only routes whose destination lies
    inside one of them are ours to prune or report in :meth:`owned`, so several networks
    (two daemons, or ``--networks``) share one namespace without deleting each other's
    routes. Thread-safe (one lock around each operation).
    """

    def __init__(
        self,
        *,
        protocol: int = RTPROT_FLANNEL,
        table: int = RT_TABLE_MAIN,
        netns: str | None = None,
        scope: Iterable[IPNetwork] | None = None,
    ) -> None:
        if not 5 <= protocol <= 255:
            raise ValueError(
                f"route protocol must be 5..255 (0-4 are the kernel's), got {protocol}"
            )
        self.protocol = protocol
        self.table = table
        self.scope: tuple[IPNetwork, ...] | None = None if scope is None else tuple(scope)
        """The destinations this table owns; ``None`` means every route with our protocol."""
        if self.scope is not None and not self.scope:
            raise ValueError(
                "route scope is empty: pass the network's CIDRs, or None to own every "
                f"route with protocol {protocol}"
            )
        self._index: _Index | None = None
        """Verified kernel body -> wanted route, and wanted routes not verified yet; reset
        whenever the wanted set changes."""
        self._outside: set[bytes] = set()
        """Raw bodies of our-protocol routes seen outside the scope (not decoded again)."""
        self._wanted: dict[IPNetwork, Route] = {}
        self._programmed: dict[IPNetwork, Route] = {}
        self._verified: dict[int, tuple[Route, bytes]] = {}
        """id(wanted route) -> (that route, the raw kernel body verified to match it)."""
        self._lock = threading.Lock()
        self._sock = RtnlSocket(netns)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wanted state (no I/O) ----------------------------------------------------------

    def __len__(self) -> int:
        """How many routes are wanted (no copy, unlike :attr:`wanted`)."""
        return len(self._wanted)

    @property
    def wanted(self) -> Mapping[IPNetwork, Route]:
        return dict(self._wanted)

    def want(self, route: Route) -> None:
        """Want ``route`` (replacing any wanted route to the same destination)."""
        self._check(route)
        with self._lock:
            self._wanted[route.dst] = route
            self._index = None

    def forget(self, dst: IPNetwork) -> None:
        """Stop wanting the route to ``dst``; the next ``sync(prune=True)`` deletes it."""
        with self._lock:
            self._wanted.pop(dst, None)
            self._index = None

    def want_only(self, routes: Iterable[Route]) -> None:
        """Make ``routes`` the complete wanted set."""
        new: dict[IPNetwork, Route] = {}
        for route in routes:
            self._check(route)
            new[route.dst] = route
        with self._lock:
            self._wanted = new
            self._index = None

    def _check(self, route: Route) -> None:
        if route.table != self.table:
            raise ValueError(
                f"route {route} is for table {route.table} but this RouteTable manages "
                f"table {self.table}: use one RouteTable per table"
            )

    # -- kernel I/O -----------------------------------------------------------------------

    def in_scope(self, dst: IPNetwork) -> bool:
        """Whether a route to ``dst`` is this table's to prune (always without a scope)."""
        if self.scope is None:
            return True
        return any(
            net.version == dst.version and dst.subnet_of(net)  # type: ignore[arg-type]
            for net in self.scope
        )

    def owned(self) -> list[Route]:
        """Routes in the kernel carrying our protocol inside our scope (e.g. left by a
        previous run)."""
        with self._lock:
            return [
                Route(k.dst, k.gateway, k.oif, k.onlink, k.table)
                for family in (socket.AF_INET, socket.AF_INET6)
                for k in self._sock.dump_routes(family, self.table, self.protocol)
                if self.in_scope(k.dst)
            ]

    def sync(self, *, prune: bool = True) -> SyncReport:
        """Make the kernel match the wanted routes: one dump per family, batched writes.

        ``prune`` deletes owned routes whose destination is not wanted; leave it off until
        the wanted set is complete (e.g. before the first full list of peers).

        Cost is linear and small: a wanted route whose raw kernel bytes were verified
        earlier (or, for IPv4, equal the bytes the kernel reports for it) and are still in
        the dump is accepted without decoding, so a no-change pass over 10,000 routes
        decodes nothing and writes nothing. Keeping the same Route objects wanted across
        passes makes that a dictionary hit.
        """
        with self._lock:
            wanted = self._wanted
            bodies: set[bytes] = set()
            for family in (socket.AF_INET, socket.AF_INET6):
                bodies.update(self._sock.dump_route_bodies(family, self.table))
            # Wanted routes whose verified body is still in the dump need no decoding. The
            # index of verified bodies survives quiet passes: then this is set arithmetic.
            cache = self._verified
            index = self._index
            if index is None:
                index = self._index = self._build_index(wanted)
            by_body, unverified = index
            gone = by_body.keys() - bodies
            used = by_body.keys() - gone if gone else set(by_body)
            pending: list[Route] = []
            for want in [*unverified, *(by_body[b] for b in gone)]:
                guess = self._guess(want)
                if guess is not None and guess in bodies:
                    cache[id(want)] = (want, guess)
                    used.add(guess)
                    continue
                pending.append(want)
            kernel: dict[IPNetwork, list[tuple[KernelRoute, bytes]]] = {}
            outside: set[bytes] = set()
            for body in bodies - used if used else bodies:
                if body in self._outside and not pending:
                    outside.add(body)
                    continue
                k = decode_route(body, 0, len(body))
                if k is None or k.table != self.table:
                    continue
                if k.priority == _METRIC[k.dst.version] or k.protocol == self.protocol:
                    kernel.setdefault(k.dst, []).append((k, body))
                    if k.protocol == self.protocol and not self.in_scope(k.dst):
                        outside.add(body)
            self._outside = outside
            report = SyncReport(unchanged=len(wanted) - len(pending))
            programmed = dict(wanted)
            writes: list[tuple[Route, RouteMessage]] = []
            for want in pending:
                metric = _METRIC[want.dst.version]
                match = next(
                    (
                        body
                        for k, body in kernel.get(want.dst, ())
                        if k.priority == metric and _matches(want, k, self.protocol)
                    ),
                    None,
                )
                if match is not None:
                    cache[id(want)] = (want, match)
                    report.unchanged += 1
                    continue
                del programmed[want.dst]
                writes.append((want, self._message("replace", want)))
            if prune:
                for dst, have in kernel.items():
                    if dst in wanted or not self.in_scope(dst):
                        continue
                    for k, _body in have:
                        if k.protocol == self.protocol:
                            old = Route(k.dst, k.gateway, k.oif, k.onlink, k.table)
                            writes.append((old, self._message("delete", old)))
            if len(cache) > 2 * len(wanted) + 1024:
                self._verified = {id(w): cache[id(w)] for w in wanted.values() if id(w) in cache}
            self._programmed = programmed
            self._write(writes, report, programmed)
            if pending or gone:
                self._index = None  # rebuilt from the cache on the next pass
            return report

    def _build_index(self, wanted: Mapping[IPNetwork, Route]) -> _Index:
        """Split ``wanted`` into routes with a verified kernel body and the rest."""
        get = self._verified.get
        by_body: dict[bytes, Route] = {}
        unverified: list[Route] = []
        for want in wanted.values():
            hit = get(id(want))
            if hit is not None and hit[0] is want:
                by_body[hit[1]] = want
            else:
                unverified.append(want)
        return by_body, unverified

    def apply(self, want: Iterable[Route] = (), forget: Iterable[IPNetwork] = ()) -> SyncReport:
        """Incremental update for event batches: no dump, writes only what changed.

        Each route in ``want`` becomes wanted and is written unless the in-memory view of
        what this table programmed already holds it; each destination in ``forget`` stops
        being wanted and its programmed (or last wanted) route is deleted. A delete of a
        route that is already gone counts as done. Drift made behind our back (a route
        deleted by hand) is not seen here: the periodic ``sync()`` repairs it.
        """
        wants = list(want)
        for route in wants:
            self._check(route)
        with self._lock:
            report = SyncReport()
            self._index = None
            writes: list[tuple[Route, RouteMessage]] = []
            for dst in forget:
                old = self._programmed.pop(dst, None) or self._wanted.get(dst)
                self._wanted.pop(dst, None)
                if old is not None:
                    writes.append((old, self._message("delete", old)))
            for route in wants:
                self._wanted[route.dst] = route
                have = self._programmed.get(route.dst)
                if have is route or have == route:
                    report.unchanged += 1
                    continue
                writes.append((route, self._message("replace", route)))
            self._write(writes, report, self._programmed)
            return report

    def _write(
        self,
        writes: list[tuple[Route, RouteMessage]],
        report: SyncReport,
        programmed: dict[IPNetwork, Route],
    ) -> None:
        """Send ``writes`` batched; record results in ``report`` and ``programmed``."""
        if not writes:
            return
        nacks = {n.index: n for n in self._sock.apply([msg for _, msg in writes])}
        for i, (route, msg) in enumerate(writes):
            nack = nacks.get(i)
            if nack is not None and not (msg.op == "delete" and nack.errno == errno.ESRCH):
                report.errors.append(RouteError(route, msg.op, nack.errno, nack.message))
                if msg.op == "replace":
                    programmed.pop(route.dst, None)
            elif msg.op == "replace":
                report.replaced.append(route)
                programmed[route.dst] = route
                guess = self._guess(route)
                if guess is not None:
                    self._verified[id(route)] = (route, guess)
            else:
                report.deleted.append(route)
                if programmed.get(route.dst) == route:
                    del programmed[route.dst]

    @property
    def programmed(self) -> Mapping[IPNetwork, Route]:
        """What this table believes the kernel holds for it (last sync plus applied writes)."""
        with self._lock:
            return dict(self._programmed)

    def _guess(self, route: Route) -> bytes | None:
        return expected_dump_body(
            route.dst, route.gateway, route.oif, self.protocol, route.table, route.onlink
        )

    def _message(self, op: str, route: Route) -> RouteMessage:
        return RouteMessage(
            op, route.dst, route.gateway, route.oif, self.protocol, route.table, route.onlink
        )

    def connected(self, oif: int) -> list[IPNetwork]:
        """The prefixes configured on interface ``oif`` (its directly reachable segments)."""
        with self._lock:
            return _connected(self._sock, oif)


class _HasNetworks(Protocol):
    @property
    def network(self) -> IPv4Network | None: ...
    @property
    def ipv6_network(self) -> IPv6Network | None: ...
    @property
    def networks(self) -> tuple[IPv4Network, ...]: ...
    @property
    def ipv6_networks(self) -> tuple[IPv6Network, ...]: ...


def network_scope(config: _HasNetworks) -> list[IPNetwork] | None:
    """A network config's CIDRs (``Network``, ``IPv6Network``, ``Networks``...): the route
    scope of a backend's :class:`RouteTable`; ``None`` (own everything) if it has none."""
    nets: list[IPNetwork] = [
        n
        for n in (config.network, config.ipv6_network, *config.networks, *config.ipv6_networks)
        if n is not None
    ]
    return list(dict.fromkeys(nets)) or None


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
