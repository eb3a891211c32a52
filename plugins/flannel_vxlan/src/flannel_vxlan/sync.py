"""Keep the kernel equal to the wanted peer plans: staged, batched, with per-peer rollback.

Every write goes in batches, one stage at a time over all affected peers: neighbour
entries, then FDB entries, then routes. A peer whose entry fails in one stage is rolled
back (its earlier entries deleted, its route not wanted) and marked pending; the next
reconcile retries it. Blocking (netlink); call from a worker thread, one call at a time.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel.netlink.changes import KernelChangeWatch
from flannel.netlink.neigh import EntryError, FdbEntry, NeighEntry, NeighTable
from flannel.netlink.routes import Route, RouteTable
from flannel.netlink.routes import SyncReport as RouteReport
from flannel_vxlan.plan import PeerPlan

__all__ = ["FULL_PASS_EVERY", "PlanId", "Programmer", "SyncReport"]

FULL_PASS_EVERY = 30
"""With a change watch, :meth:`Programmer.periodic` still dumps on every 30th pass (5 min
at the default 10 s interval): a safety net for changes the kernel does not announce."""

PlanId = tuple[str, int]
Entry = NeighEntry | FdbEntry
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass
class SyncReport:
    """What one pass wrote; ``writes == 0`` means the kernel already matched."""

    programmed: list[PeerPlan] = field(default_factory=list)
    failed: dict[PlanId, str] = field(default_factory=dict)
    """Peer family -> why it is not programmed (retried on the next reconcile)."""
    removed: list[Entry] = field(default_factory=list)
    entry_errors: list[EntryError] = field(default_factory=list)
    """Deletes the kernel refused (creates show up in ``failed``)."""
    routes: RouteReport = field(default_factory=RouteReport)

    @property
    def writes(self) -> int:
        entries = sum(len(p.neighs) + len(p.fdbs) for p in self.programmed)
        return entries + len(self.removed) + len(self.failed) + self.routes.writes


class Programmer:
    """The wanted plans of one vxlan network and the code that makes the kernel match.

    Counts of how many plans want each neighbour (by device and IP), FDB entry and route
    destination are kept up to date as plans change, so an event batch costs only the
    peers it names: no set over all plans, no dump. :meth:`reconcile` does the full
    compare (raw-bytes, decoding only differences) and repairs any drift; :meth:`periodic`
    does it only when ``watch`` saw a kernel change that concerns us (or every
    ``full_every`` passes), so an idle daemon dumps nothing.
    """

    def __init__(
        self,
        neigh: NeighTable,
        routes: RouteTable,
        devices: Mapping[int, int],
        watch: KernelChangeWatch | None = None,
        full_every: int = FULL_PASS_EVERY,
    ) -> None:
        self.neigh = neigh
        self.routes = routes
        self.devices = dict(devices)
        """Address family (4/6) -> vxlan device index."""
        self.watch = watch
        self.full_every = full_every
        self.full_passes = 0
        """Full passes (dumps) done so far; skipped periodic passes do not count."""
        self._quiet = 0
        self.plans: dict[PlanId, PeerPlan] = {}
        self.pending: set[PlanId] = set()
        self._neigh_refs: Counter[tuple[int, IPAddress]] = Counter()
        self._fdb_refs: Counter[FdbEntry] = Counter()
        self._route_refs: Counter[IPNetwork] = Counter()
        self._entries: list[Entry] | None = None

    # -- wanted-state bookkeeping (no I/O) ----------------------------------------------

    def _wanted_entries(self) -> list[Entry]:
        """Every wanted neighbour and FDB entry (the same objects each pass; rebuilt only
        after plans changed)."""
        if self._entries is None:
            plans = self.plans.values()
            entries: list[Entry] = [n for p in plans for n in p.neighs]
            entries += [f for p in plans for f in p.fdbs]
            self._entries = entries
        return self._entries

    def _count(self, plan: PeerPlan, step: int) -> None:
        self._entries = None
        for n in plan.neighs:
            self._neigh_refs[(n.ifindex, n.ip)] += step
        for f in plan.fdbs:
            self._fdb_refs[f] += step
        for r in plan.routes:
            self._route_refs[r.dst] += step

    def _set_plan(self, plan: PeerPlan) -> PeerPlan | None:
        previous = self.plans.get(plan.plan_id)
        if previous is not None:
            self._count(previous, -1)
        self.plans[plan.plan_id] = plan
        self._count(plan, +1)
        return previous

    def _drop_plan(self, plan_id: PlanId) -> PeerPlan | None:
        gone = self.plans.pop(plan_id, None)
        if gone is not None:
            self._count(gone, -1)
        return gone

    # -- entry points -------------------------------------------------------------------

    def replace_all(self, plans: Iterable[PeerPlan]) -> SyncReport:
        """Make ``plans`` the complete wanted set and reconcile (initial sync, restart)."""
        self.plans = {}
        self._entries = None
        self._neigh_refs.clear()
        self._fdb_refs.clear()
        self._route_refs.clear()
        for plan in plans:
            self._set_plan(plan)
        self.pending &= set(self.plans)
        self.routes.want_only(r for p in self.plans.values() for r in p.routes)
        return self.reconcile()

    def apply_changes(self, upserts: Iterable[PeerPlan], removed: Iterable[PlanId]) -> SyncReport:
        """Apply changed/new plans and removals: writes only the named peers' entries and
        routes (``RouteTable.apply``), without dumping anything."""
        report = SyncReport()
        old: list[PeerPlan] = []
        for plan_id in removed:
            gone = self._drop_plan(plan_id)
            self.pending.discard(plan_id)
            if gone is not None:
                old.append(gone)
        todo: list[PeerPlan] = []
        for plan in upserts:
            previous = self.plans.get(plan.plan_id)
            if previous == plan and plan.plan_id not in self.pending:
                continue
            self._set_plan(plan)
            if previous is not None:
                old.append(previous)
            todo.append(plan)
        forget = self._remove_unwanted(old, report)
        self._program(todo, report, full=False, forget=forget)
        return report

    def periodic(self) -> SyncReport | None:
        """A full :meth:`reconcile` if it can find anything to do, else None (no dump):
        without a watch, with peers pending, when the watch saw a change concerning our
        devices or routes, or on every ``full_every``-th pass."""
        self._quiet += 1
        if (
            self.watch is not None
            and not self.pending
            and self._quiet < self.full_every
            and not self.watch.poll()
        ):
            return None
        return self.reconcile()

    def reconcile(self) -> SyncReport:
        """Compare neighbours/FDB of our devices with the plans (one dump per family, raw
        bytes, decoding only differences), delete stale entries, restore missing ones and,
        via the route table, missing routes. No writes when the kernel matches."""
        if self.watch is not None:
            self.watch.poll()  # drain first: what arrives during the dumps stays queued
        report = self._full_pass()
        self.full_passes += 1
        self._quiet = 0
        if self.watch is not None and not (
            report.failed or report.entry_errors or report.routes.errors
        ):
            self.watch.clear()
        return report

    def _full_pass(self) -> SyncReport:
        report = SyncReport()
        devices = {
            index: socket.AF_INET if family == 4 else socket.AF_INET6
            for family, index in self.devices.items()
        }
        snap = self.neigh.snapshot(devices, self._wanted_entries())
        stale: list[Entry] = [
            e
            for e in snap.foreign
            if (isinstance(e, NeighEntry) and not self._neigh_refs[(e.ifindex, e.ip)])
            or (isinstance(e, FdbEntry) and not self._fdb_refs[e])
        ]
        if stale:
            report.entry_errors += self.neigh.delete(stale)
            report.removed += stale
        todo = [self.plans[i] for i in self.pending if i in self.plans]
        if snap.missing:
            missing = {id(e) for e in snap.missing}
            todo += [
                p
                for i, p in self.plans.items()
                if i not in self.pending
                and (
                    any(id(n) in missing for n in p.neighs) or any(id(f) in missing for f in p.fdbs)
                )
            ]
        self._program(todo, report, full=True)
        return report

    # -- internals ----------------------------------------------------------------------

    def _remove_unwanted(self, old: list[PeerPlan], report: SyncReport) -> list[IPNetwork]:
        """Delete entries of replaced/removed plans that no current plan still wants;
        return the route destinations no plan wants any more."""
        stale: list[Entry] = []
        forget: list[IPNetwork] = []
        for plan in old:
            stale += [n for n in plan.neighs if not self._neigh_refs[(n.ifindex, n.ip)]]
            stale += [f for f in plan.fdbs if not self._fdb_refs[f]]
            forget += [r.dst for r in plan.routes if not self._route_refs[r.dst]]
        self._trim()
        stale = list(dict.fromkeys(stale))
        if stale:
            report.entry_errors += self.neigh.delete(stale)
            report.removed += stale
        return list(dict.fromkeys(forget))

    def _trim(self) -> None:
        """Drop zero counts so the counters stay as small as the wanted state."""
        for refs in (self._neigh_refs, self._fdb_refs, self._route_refs):
            if len(refs) > 2 * len(self.plans) + 1024:
                for key in [k for k, v in refs.items() if v <= 0]:
                    del refs[key]

    def _program(
        self,
        todo: list[PeerPlan],
        report: SyncReport,
        *,
        full: bool,
        forget: Sequence[IPNetwork] = (),
    ) -> None:
        """Write ``todo`` in stages. ``full`` ends with a route ``sync`` (dump, compare,
        prune); otherwise only the named routes are written and ``forget`` deleted."""
        failed: dict[PlanId, str] = {}
        # Stage 1 and 2: neighbours, then FDB entries, for every peer not yet failed.
        for stage in ("neighs", "fdbs"):
            owners: dict[Entry, list[PlanId]] = {}
            for plan in todo:
                if plan.plan_id not in failed:
                    for entry in getattr(plan, stage):
                        owners.setdefault(entry, []).append(plan.plan_id)
            if owners:
                for error in self.neigh.replace(list(owners)):
                    for plan_id in owners.get(error.entry, ()):  # type: ignore[call-overload]
                        failed.setdefault(plan_id, str(error))
        # Stage 3: routes of the peers whose entries are all in place.
        want: list[Route] = []
        drop: list[IPNetwork] = list(forget)
        for plan in todo:
            if plan.plan_id in failed:
                drop += [r.dst for r in plan.routes]
            else:
                want += plan.routes
        if full:
            for dst in drop:
                self.routes.forget(dst)
            for route in want:
                self.routes.want(route)
            report.routes = self.routes.sync(prune=True)
            route_owners: Iterable[PeerPlan] = self.plans.values() if report.routes.errors else ()
        else:
            report.routes = self.routes.apply(want=want, forget=drop)
            route_owners = todo
        by_dst = {r.dst: p.plan_id for p in route_owners for r in p.routes}
        for route_error in report.routes.errors:
            plan_id = by_dst.get(route_error.route.dst)
            if route_error.op == "replace" and plan_id is not None:
                failed.setdefault(plan_id, str(route_error))
        self._roll_back(failed)
        self.pending = (self.pending - {p.plan_id for p in todo}) | set(failed)
        report.failed.update(failed)
        report.programmed += [p for p in todo if p.plan_id not in failed]

    def _roll_back(self, failed: Mapping[PlanId, str]) -> None:
        """Undo the entries and routes of failed peers so none is left half-programmed."""
        undo: list[Entry] = []
        dsts: list[IPNetwork] = []
        for plan_id in failed:
            plan = self.plans.get(plan_id)
            if plan is None:
                continue
            undo += [*plan.neighs, *plan.fdbs]
            dsts += [r.dst for r in plan.routes]
        if undo:
            self.neigh.delete(dict.fromkeys(undo))
        if dsts:
            self.routes.apply(forget=dsts)
