"""Keep the kernel equal to the wanted peer plans: staged, batched, with per-peer rollback.

Every write goes in batches, one stage at a time over all affected peers: neighbour
entries, then FDB entries, then routes. A peer whose entry fails in one stage is rolled
back (its earlier entries deleted, its route not wanted) and marked pending; the next
reconcile retries it. Blocking (netlink); call from a worker thread, one call at a time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flannel.netlink.neigh import EntryError, FdbEntry, NeighEntry, NeighTable
from flannel.netlink.routes import RouteTable
from flannel.netlink.routes import SyncReport as RouteReport
from flannel_vxlan.plan import PeerPlan

__all__ = ["PlanId", "Programmer", "SyncReport"]

PlanId = tuple[str, int]
Entry = NeighEntry | FdbEntry


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
    """The wanted plans of one vxlan network and the code that makes the kernel match."""

    def __init__(self, neigh: NeighTable, routes: RouteTable, devices: Mapping[int, int]) -> None:
        self.neigh = neigh
        self.routes = routes
        self.devices = dict(devices)
        """Address family (4/6) -> vxlan device index."""
        self.plans: dict[PlanId, PeerPlan] = {}
        self.pending: set[PlanId] = set()

    # -- entry points -------------------------------------------------------------------

    def replace_all(self, plans: Iterable[PeerPlan]) -> SyncReport:
        """Make ``plans`` the complete wanted set and reconcile (initial sync, restart)."""
        self.plans = {p.plan_id: p for p in plans}
        self.pending &= set(self.plans)
        self.routes.want_only(r for p in self.plans.values() for r in p.routes)
        return self.reconcile()

    def apply_changes(self, upserts: Iterable[PeerPlan], removed: Iterable[PlanId]) -> SyncReport:
        """Apply changed/new plans and removals without dumping neighbours or FDB."""
        report = SyncReport()
        old: list[PeerPlan] = []
        for plan_id in removed:
            gone = self.plans.pop(plan_id, None)
            self.pending.discard(plan_id)
            if gone is not None:
                old.append(gone)
        todo: list[PeerPlan] = []
        for plan in upserts:
            previous = self.plans.get(plan.plan_id)
            if previous == plan and plan.plan_id not in self.pending:
                continue
            if previous is not None:
                old.append(previous)
            self.plans[plan.plan_id] = plan
            todo.append(plan)
        self._remove_unwanted(old, report)
        self._program(todo, report)
        return report

    def reconcile(self) -> SyncReport:
        """Dump neighbours/FDB of our devices, delete stale entries, restore missing ones
        (and, via the route table, missing routes). No writes when the kernel matches."""
        report = SyncReport()
        have: set[Entry] = set()
        for family, index in self.devices.items():
            have |= self.neigh.dump_neigh(index, socket.AF_INET if family == 4 else socket.AF_INET6)
            have |= self.neigh.dump_fdb(index)
        wanted_ips = {(n.ifindex, n.ip) for p in self.plans.values() for n in p.neighs}
        wanted_fdb = {f for p in self.plans.values() for f in p.fdbs}
        stale: list[Entry] = [
            e
            for e in have
            if (isinstance(e, NeighEntry) and (e.ifindex, e.ip) not in wanted_ips)
            or (isinstance(e, FdbEntry) and e not in wanted_fdb)
        ]
        if stale:
            report.entry_errors += self.neigh.delete(stale)
            report.removed += stale
        todo = [
            p
            for p in self.plans.values()
            if p.plan_id in self.pending
            or not all(n in have for n in p.neighs)
            or not all(f in have for f in p.fdbs)
        ]
        self._program(todo, report)
        return report

    # -- internals ----------------------------------------------------------------------

    def _remove_unwanted(self, old: list[PeerPlan], report: SyncReport) -> None:
        """Delete entries of replaced/removed plans that no current plan still wants."""
        wanted_ips = {(n.ifindex, n.ip) for p in self.plans.values() for n in p.neighs}
        wanted_fdb = {f for p in self.plans.values() for f in p.fdbs}
        wanted_dst = {r.dst for p in self.plans.values() for r in p.routes}
        stale: list[Entry] = []
        for plan in old:
            stale += [n for n in plan.neighs if (n.ifindex, n.ip) not in wanted_ips]
            stale += [f for f in plan.fdbs if f not in wanted_fdb]
            for route in plan.routes:
                if route.dst not in wanted_dst:
                    self.routes.forget(route.dst)
        stale = list(dict.fromkeys(stale))
        if stale:
            report.entry_errors += self.neigh.delete(stale)
            report.removed += stale

    def _program(self, todo: list[PeerPlan], report: SyncReport) -> None:
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
        for plan in todo:
            for route in plan.routes:
                if plan.plan_id in failed:
                    self.routes.forget(route.dst)
                else:
                    self.routes.want(route)
        report.routes = self.routes.sync(prune=True)
        by_dst = {r.dst: p.plan_id for p in self.plans.values() for r in p.routes}
        for route_error in report.routes.errors:
            plan_id = by_dst.get(route_error.route.dst)
            if route_error.op == "replace" and plan_id is not None:
                failed.setdefault(plan_id, str(route_error))
        self._roll_back(failed)
        self.pending = (self.pending - {p.plan_id for p in todo}) | set(failed)
        report.failed.update(failed)
        report.programmed += [p for p in todo if p.plan_id not in failed]

    def _roll_back(self, failed: Mapping[PlanId, str]) -> None:
        """Undo the entries of failed peers so none is left half-programmed."""
        undo: list[Entry] = []
        for plan_id in failed:
            plan = self.plans.get(plan_id)
            if plan is None:
                continue
            undo += [*plan.neighs, *plan.fdbs]
            for route in plan.routes:
                self.routes.forget(route.dst)
        if undo:
            self.neigh.delete(dict.fromkeys(undo))
