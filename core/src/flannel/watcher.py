"""Peer lease watch and own-lease watch that never lose an event.

flanneld v0.20 re-opens a watch per event and resumes "from now", so bursts of joins are
lost. Here: list once, then ONE long-lived prefix watch from the list revision + 1; every
watch response becomes one batch. A compacted start revision or the periodic safety relist
re-reads everything and emits the difference against what was delivered. A lost connection
is retried with exponential backoff and jitter, resuming at the last seen revision + 1.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from flannel.config import NetworkConfig
from flannel.etcd import (
    EtcdAuthError,
    EtcdClosed,
    EtcdConfigError,
    EtcdError,
    describe_error,
    is_connection_error,
)
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.registry import KeyEvent, LeaseList, Registry, WatchCompacted, WatchStreamError

__all__ = ["Backoff", "LeaseWatcher", "lease_in_network", "same_host", "wait_lease_lost"]

log = logging.getLogger(__name__)

DEFAULT_RESYNC_INTERVAL = 300.0


class Backoff:
    """Exponential backoff with jitter: ``first`` doubling up to ``cap`` seconds.

    :meth:`failed` logs the first failure of a streak as a warning and repeats at debug
    level (an etcd outage must not flood the log); :meth:`succeeded` ends the streak.
    """

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self._next = first
        self.failures = 0

    def reset(self) -> None:
        self._next = self.first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return min(self.cap, delay * random.uniform(0.5, 1.5))

    async def failed(self, what: str, exc: BaseException) -> None:
        delay = self.next_delay()
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "%s: %s; retrying in %.1f s", what, describe_error(exc), delay)
        await asyncio.sleep(delay)

    def succeeded(self, what: str) -> None:
        if self.failures:
            log.info("%s: recovered after %d retries", what, self.failures)
        self.failures = 0
        self.reset()


def _retryable(exc: BaseException) -> bool:
    """Errors a watch survives by reconnecting (not auth/config mistakes)."""
    if isinstance(exc, (EtcdAuthError, EtcdClosed, EtcdConfigError)):
        return False
    return isinstance(exc, (WatchStreamError, EtcdError)) or is_connection_error(exc)


def _closed(what: str) -> EtcdClosed:
    return EtcdClosed(f"{what} ended: the etcd connection was closed")


def lease_in_network(lease: Lease, config: NetworkConfig | None) -> str | None:
    """Why ``lease`` cannot belong to ``config``'s network, or None if it can."""
    if config is None:
        return None
    if (
        lease.subnet is not None
        and config.network is not None
        and not lease.subnet.subnet_of(config.network)
    ):
        return f"subnet {lease.subnet} is outside Network {config.network}"
    if (
        lease.ipv6_subnet is not None
        and config.ipv6_network is not None
        and not lease.ipv6_subnet.subnet_of(config.ipv6_network)
    ):
        return f"subnet {lease.ipv6_subnet} is outside IPv6Network {config.ipv6_network}"
    return None


class LeaseWatcher:
    """Batches of peer events for one network; ``own`` is excluded by key.

    Iterate :meth:`batches` (or the watcher itself). The first batch lists every known peer
    as Added (possibly empty); Removed events carry the last attributes delivered.
    """

    def __init__(
        self,
        registry: Registry,
        own: Lease | None,
        *,
        network: NetworkConfig | None = None,
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
        backoff: Backoff | None = None,
    ) -> None:
        self.registry = registry
        self.own_key = own.key if own is not None else None
        self.network = network
        self.resync_interval = resync_interval
        self.backoff = backoff or Backoff()
        self.known: dict[str, Lease] = {}

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self.batches()

    # --- pure bookkeeping (unit-testable without etcd) ---------------------------------

    def usable(self, lease: Lease | None, key: str, revision: int) -> Lease | None:
        if lease is None or key == self.own_key:
            return None
        problem = lease_in_network(lease, self.network)
        if problem is not None:
            self.registry.warn_malformed(
                self.registry.subnets_prefix + key.encode(), revision, problem
            )
            return None
        return lease

    def apply_snapshot(self, listing: LeaseList) -> list[Event]:
        """Diff a full listing against what was delivered; update the cache."""
        fresh: dict[str, Lease] = {}
        for lease in listing.leases:
            usable = self.usable(lease, lease.key, lease.mod_revision)
            if usable is not None:
                fresh[lease.key] = usable
        events = [Event.removed(old) for key, old in self.known.items() if key not in fresh]
        for key, lease in fresh.items():
            old = self.known.get(key)
            if old is None or old.mod_revision != lease.mod_revision or old.attrs != lease.attrs:
                events.append(Event.added(lease))
        self.known = fresh
        return events

    def apply_events(self, events: list[KeyEvent]) -> list[Event]:
        """Turn one watch response into peer events; update the cache."""
        out: list[Event] = []
        for ev in events:
            if ev.key == self.own_key:
                continue
            lease = None if ev.deleted else self.usable(ev.lease, ev.key, ev.mod_revision)
            if lease is None:
                # Deleted, or overwritten with something unusable: the peer is gone.
                old = self.known.pop(ev.key, None)
                if old is not None:
                    out.append(Event.removed(old))
                continue
            self.known[ev.key] = lease
            out.append(Event.added(lease))
        return out

    # --- the loop ----------------------------------------------------------------------

    async def _list(self) -> LeaseList:
        while True:
            try:
                listing = await self.registry.list_leases()
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if self.registry.conn.closed:
                    raise _closed("the lease watch") from None
                await self.backoff.failed("listing leases failed", exc)
                continue
            self.backoff.succeeded("listing leases")
            return listing

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        loop = asyncio.get_running_loop()
        listing = await self._list()
        yield self.apply_snapshot(listing)
        next_rev = listing.revision + 1
        resync_at = loop.time() + self.resync_interval
        while True:
            relist = False
            stream = self.registry.watch(next_rev)
            try:
                while True:
                    remaining = resync_at - loop.time()
                    if remaining <= 0:
                        relist = True
                        break
                    try:
                        batch = await asyncio.wait_for(anext(stream), remaining)
                    except TimeoutError:
                        relist = True
                        break
                    self.backoff.succeeded("lease watch")
                    next_rev = batch.next_revision
                    events = self.apply_events(batch.events)
                    if events:
                        yield events
            except WatchCompacted as exc:
                log.info("lease watch: %s; relisting", exc)
                relist = True
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if self.registry.conn.closed:
                    raise _closed("the lease watch") from None
                await self.backoff.failed(
                    f"lease watch interrupted (resuming at revision {next_rev})", exc
                )
            finally:
                await stream.aclose()
            if relist:
                listing = await self._list()
                events = self.apply_snapshot(listing)
                next_rev = listing.revision + 1
                resync_at = loop.time() + self.resync_interval
                if events:
                    log.info("lease relist found %d change(s) the watch had not shown", len(events))
                    yield events


def same_host(a: LeaseAttrs, b: LeaseAttrs, ipv4: bool = True) -> bool:
    """Whether two lease attrs name the same host: the PublicIP, or PublicIPv6 when there
    is no IPv4 (flanneld compares PublicIP only, so every IPv6-only host looks the same)."""
    if ipv4 and not b.public_ip.is_unspecified:
        return a.public_ip == b.public_ip
    return b.public_ipv6 is not None and a.public_ipv6 == b.public_ipv6


async def wait_lease_lost(
    registry: Registry,
    lease: Lease,
    *,
    is_ours: Callable[[LeaseAttrs], bool] | None = None,
    resync_interval: float = DEFAULT_RESYNC_INTERVAL,
    backoff: Backoff | None = None,
) -> str:
    """Return (with the reason) when ``lease``'s key is deleted, expires, becomes unreadable
    or names another host. Survives reconnects and compaction (it re-reads the key)."""
    backoff = backoff or Backoff()
    key = registry.lease_key(lease.subnet, lease.ipv6_subnet)
    ours = is_ours or (lambda attrs: same_host(attrs, lease.attrs, lease.subnet is not None))
    loop = asyncio.get_running_loop()

    def check(found: Lease | None) -> str | None:
        if found is None:
            return f"lease {lease.key} was deleted or expired"
        if not ours(found.attrs):
            owner = found.attrs.public_ipv6 if found.attrs.public_ip.is_unspecified else None
            return f"lease {lease.key} now belongs to {owner or found.attrs.public_ip}"
        return None

    while True:
        try:
            kv, revision = await registry.get_key(key)
            found = None if kv is None else registry.decode_kv(kv)
            if kv is not None and found is None:
                return f"lease {lease.key} was overwritten with an unreadable value"
            reason = check(found)
            if reason is not None:
                return reason
            backoff.succeeded("own lease watch")
            resync_at = loop.time() + resync_interval
            stream = registry.watch(revision + 1, key=key)
            try:
                while (remaining := resync_at - loop.time()) > 0:
                    try:
                        batch = await asyncio.wait_for(anext(stream), remaining)
                    except TimeoutError:
                        break
                    for ev in batch.events:
                        if ev.deleted:
                            return f"lease {lease.key} was deleted or expired"
                        if ev.lease is None:
                            return f"lease {lease.key} was overwritten with an unreadable value"
                        reason = check(ev.lease)
                        if reason is not None:
                            return reason
            finally:
                await stream.aclose()
        except WatchCompacted:
            continue
        except Exception as exc:
            if not _retryable(exc):
                raise
            if registry.conn.closed:
                raise _closed("the own lease watch") from None
            await backoff.failed("own lease watch interrupted", exc)
