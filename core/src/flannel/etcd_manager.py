"""The etcd v3 lease store: :class:`EtcdSubnetManager` implements ``SubnetManager``.

Usage (connect/close are explicit; the manager is also an async context manager)::

    manager = EtcdSubnetManager(EtcdClientConfig.from_flags("http://127.0.0.1:2379"))
    async with manager:                      # or: await manager.connect() ... await manager.close()
        config = await manager.get_network_config()
        lease = await manager.acquire_lease(config, LeaseAttrs(public_ip=my_ip))
        lease = await manager.renew_lease(lease)          # before lease.expiration
        async for batch in manager.watch_leases(lease): ...
        await manager.wait_lease_lost(lease)

``connect()`` fails fast with a one-line :class:`~flannel.etcd.EtcdUnavailable` when no
endpoint answers; every method also connects on first use. Fixes over flanneld v0.20.2:
creation races are retried, renewals compare-and-swap (a subnet that went to another host is
never overwritten), reservations (keys without an etcd lease) are never given a TTL, leases
are listed in one read, and the watch never drops events.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Network, summarize_address_range
from types import TracebackType
from typing import TYPE_CHECKING

from flannel.allocator import pick_ipv6_subnet, pick_subnet
from flannel.config import NetworkConfig, parse_config
from flannel.etcd import EtcdClientConfig, EtcdConnection
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.manager import (
    ConfigNotFound,
    LeaseLost,
    OutOfSubnets,
    PreviousSubnets,
    SubnetManager,
    SubnetManagerError,
)
from flannel.registry import DEFAULT_PREFIX, Registry
from flannel.watcher import DEFAULT_RESYNC_INTERVAL, LeaseWatcher, same_host, wait_lease_lost

__all__ = ["DEFAULT_LEASE_TTL", "EtcdSubnetManager"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 86_400
"""flanneld's hard-coded 24 h lease; here the constructor's ``lease_ttl``."""

RACE_WARN_EVERY = 10
"""Creation races are retried while subnets are free; warn every this many in a row."""


def _needle(config: NetworkConfig, attrs: LeaseAttrs) -> bytes | None:
    """The bytes every value naming our host must contain (its quoted public address);
    acquire decodes only those values, so 10,000 peers cost one read, not 10,000 decodes."""
    if config.enable_ipv4 and not attrs.public_ip.is_unspecified:
        return f'"{attrs.public_ip}"'.encode()
    if attrs.public_ipv6 is not None:
        return f'"{attrs.public_ipv6}"'.encode()
    return None


def collapse_spans(spans: Iterable[tuple[int, int]]) -> list[IPv4Network]:
    """Merge address spans and express them as few CIDRs (allocator input); leases are
    mostly contiguous, so 10,000 /24s usually collapse into a handful of networks."""
    merged: list[list[int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    out: list[IPv4Network] = []
    for first, last in merged:
        out.extend(summarize_address_range(IPv4Address(first), IPv4Address(last)))
    return out


class EtcdSubnetManager:
    """Leases for one flannel network stored in etcd v3, flanneld v0.20 layout.

    ``prefix`` is ``--etcd-prefix``; ``network_name`` (v0.7 multi-network) puts the network
    under ``<prefix>/<name>``. ``lease_ttl`` is the etcd lease TTL in seconds.
    ``resync_interval`` is the period of the watches' safety relist.
    """

    def __init__(
        self,
        client_config: EtcdClientConfig,
        prefix: str = DEFAULT_PREFIX,
        *,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        network_name: str = "",
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
    ) -> None:
        if int(lease_ttl) != lease_ttl or lease_ttl < 2:
            raise SubnetManagerError(
                f"lease TTL {lease_ttl!r} is invalid: use a whole number of seconds >= 2 "
                f"(default {DEFAULT_LEASE_TTL})"
            )
        self.client_config = client_config
        self.lease_ttl = int(lease_ttl)
        self.resync_interval = resync_interval
        self.conn = EtcdConnection(client_config)
        self.registry = Registry(self.conn, prefix, network_name)
        self._config: NetworkConfig | None = None

    # --- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the first answering endpoint (raises EtcdUnavailable)."""
        self.conn.reopen()
        await self.conn.client()

    async def close(self) -> None:
        """Close the connection; running watches end with EtcdClosed."""
        await self.conn.close()

    async def __aenter__(self) -> EtcdSubnetManager:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- config ------------------------------------------------------------------------

    @property
    def config_key(self) -> str:
        return self.registry.config_key.decode()

    async def get_config_raw(self) -> bytes | None:
        """The config document exactly as stored (None if absent)."""
        return await self.registry.get_config()

    async def set_config(self, raw: bytes | str) -> NetworkConfig:
        """Validate, then store a config document verbatim (raises ConfigError first)."""
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        config = parse_config(data)
        await self.registry.put_config(data)
        return config

    async def get_network_config(self) -> NetworkConfig:
        raw = await self.registry.get_config()
        if raw is None:
            raise ConfigNotFound(
                f"flannel config not found in etcd at {self.config_key}: create it, e.g. "
                f"etcdctl put {self.config_key} "
                '\'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}\''
            )
        config = parse_config(raw)
        self._config = config
        return config

    # --- acquire -----------------------------------------------------------------------

    def _ours(self, config: NetworkConfig, mine: LeaseAttrs, other: LeaseAttrs) -> bool:
        return same_host(other, mine, ipv4=config.enable_ipv4)

    async def acquire_lease(
        self, config: NetworkConfig, attrs: LeaseAttrs, previous: PreviousSubnets | None = None
    ) -> Lease:
        """Reuse our lease (same public IP), else the previous subnet, else a random free one.

        A lost creation race is retried with a fresh listing for as long as subnets are free;
        raises OutOfSubnets when none is.
        """
        self._config = config
        races = 0
        try_previous = previous is not None
        needle = _needle(config, attrs)
        while True:
            scan = await self.registry.scan(needle)
            spans, taken6 = list(scan.v4_spans), list(scan.v6_subnets)
            outcome = await self._reuse_own(config, attrs, scan.matching, spans, taken6)
            if isinstance(outcome, Lease):
                return outcome
            if outcome == "race":
                races = await self._race_pause(races)
                continue
            taken4 = collapse_spans(spans)

            if try_previous:
                assert previous is not None
                try_previous = False
                pick = self._previous_pick(config, previous, taken4, taken6)
                if pick is not None:
                    lease = await self.registry.create(pick[0], pick[1], attrs, self.lease_ttl)
                    if lease is not None:
                        log.info("acquired lease %s (previous subnet)", lease.key)
                        return lease
                    races = await self._race_pause(races)
                    continue

            subnet = pick_subnet(config, taken4) if config.enable_ipv4 else None
            ipv6_subnet = pick_ipv6_subnet(config, taken6) if config.enable_ipv6 else None
            if (config.enable_ipv4 and subnet is None) or (
                config.enable_ipv6 and ipv6_subnet is None
            ):
                raise OutOfSubnets(self._out_of_subnets(config, subnet is None, scan.count))
            lease = await self.registry.create(subnet, ipv6_subnet, attrs, self.lease_ttl)
            if lease is not None:
                log.info("acquired lease %s for %s", lease.key, attrs.public_ip)
                return lease
            races = await self._race_pause(races)

    async def _reuse_own(
        self,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        candidates: list[Lease],
        spans: list[tuple[int, int]],
        taken6: list[IPv6Network],
    ) -> Lease | str | None:
        """Step 1: our own lease. Returns it (renewed), "race" to relist, or None.

        An incompatible lease of ours is deleted and its subnet dropped from the taken
        ``spans``/``taken6`` (a reservation is left alone)."""
        mine = [le for le in candidates if self._ours(config, attrs, le.attrs)]
        mine.sort(key=lambda le: not le.is_reservation)  # an admin's reservation wins
        for lease in mine:
            if config.contains_lease(lease):
                ttl = None if lease.is_reservation else self.lease_ttl
                renewed = await self.registry.update(lease, attrs, ttl)
                if renewed is None:
                    return "race"
                log.info("reusing %s %s", "reservation" if ttl is None else "lease", renewed.key)
                return renewed
            if lease.is_reservation:
                log.warning(
                    "reservation %s for %s does not fit the network config; leaving it and "
                    "allocating another subnet (fix or delete the reservation)",
                    lease.key,
                    attrs.public_ip,
                )
                continue
            if await self.registry.delete(lease):
                log.info("deleted lease %s: it does not fit the current network config", lease.key)
            if lease.subnet is not None:
                span = (int(lease.subnet.network_address), int(lease.subnet.broadcast_address))
                if span in spans:
                    spans.remove(span)
            if lease.ipv6_subnet is not None and lease.ipv6_subnet in taken6:
                taken6.remove(lease.ipv6_subnet)
        return None

    def _previous_pick(
        self,
        config: NetworkConfig,
        previous: PreviousSubnets,
        taken4: Sequence[IPv4Network],
        taken6: Sequence[IPv6Network],
    ) -> tuple[IPv4Network | None, IPv6Network | None] | None:
        subnet = previous.subnet if config.enable_ipv4 else None
        ipv6_subnet = previous.ipv6_subnet if config.enable_ipv6 else None
        if (config.enable_ipv4 and subnet is None) or (config.enable_ipv6 and ipv6_subnet is None):
            return None
        if not (config.contains_subnet(subnet) and config.contains_ipv6_subnet(ipv6_subnet)):
            log.warning(
                "previous subnet %s does not fit the network config; allocating a new one",
                subnet or ipv6_subnet,
            )
            return None
        if subnet is not None and any(subnet.overlaps(t) for t in taken4):
            return None
        if ipv6_subnet is not None and any(ipv6_subnet.overlaps(t) for t in taken6):
            return None
        return subnet, ipv6_subnet

    async def _race_pause(self, races: int) -> int:
        races += 1
        if races % RACE_WARN_EVERY == 0:
            log.warning("lost %d subnet creation races in a row; still retrying", races)
        await asyncio.sleep(random.uniform(0, min(0.2, 0.005 * races)))
        return races

    def _out_of_subnets(self, config: NetworkConfig, v4: bool, held: int) -> str:
        if v4:
            where = (
                f"{config.network} between {config.subnet_min} and {config.subnet_max} "
                f"(/{config.subnet_len})"
            )
        else:
            where = (
                f"{config.ipv6_network} between {config.ipv6_subnet_min} and "
                f"{config.ipv6_subnet_max} (/{config.ipv6_subnet_len})"
            )
        return (
            f"out of subnets: every subnet of {where} is leased or reserved ({held} keys under "
            f"{self.registry.prefix}/subnets); enlarge the network, widen SubnetMin/SubnetMax "
            "or delete stale leases"
        )

    # --- renew / loss ------------------------------------------------------------------

    async def renew_lease(self, lease: Lease) -> Lease:
        """Extend ``lease`` only if its key still holds our etcd lease (compare in a txn).

        Renewal grants a fresh etcd lease and rewrites the key in one transaction, then
        revokes the old etcd lease, rather than KeepAlive on the old one: the transaction
        proves the key still exists and is ours (KeepAlive succeeds even if the key was
        deleted or taken over), it applies a changed ``lease_ttl``, and it writes our
        current attrs. A reservation has no TTL to extend; renewing it only checks it. If an
        administrator turned our lease into a reservation meanwhile, the reservation is
        returned (it is still ours and never expires).
        """
        if not lease.is_reservation:
            renewed = await self.registry.update(lease, lease.attrs, self.lease_ttl)
            if renewed is not None:
                log.debug(
                    "renewed lease %s until %s", renewed.key, time.ctime(renewed.expiration or 0)
                )
                return renewed
        current = await self.registry.get_lease(lease.subnet, lease.ipv6_subnet)
        if (
            current is None
            or not current.is_reservation
            or not same_host(current.attrs, lease.attrs, lease.subnet is not None)
        ):
            raise LeaseLost(self._lost(lease))
        if not lease.is_reservation:
            log.info("lease %s is now a reservation for this host; it no longer expires", lease.key)
        return current

    def _lost(self, lease: Lease) -> str:
        return (
            f"lease {self.registry.prefix}/subnets/{lease.key} is gone or no longer ours "
            "(expired, deleted or taken by another host): acquire a new lease"
        )

    async def wait_lease_lost(self, lease: Lease) -> None:
        reason = await wait_lease_lost(self.registry, lease, resync_interval=self.resync_interval)
        log.warning("%s", reason)

    async def lease_remaining_ttl(self, lease: Lease) -> float | None:
        """Seconds left on ``lease`` (None: a reservation or already expired)."""
        if lease.etcd_lease_id == 0:
            return None
        return await self.registry.remaining_ttl(lease.etcd_lease_id)

    # --- peers -------------------------------------------------------------------------

    def watch_leases(self, own: Lease | None) -> AsyncIterator[Sequence[Event]]:
        watcher = LeaseWatcher(
            self.registry, own, network=self._config, resync_interval=self.resync_interval
        )
        return watcher.batches()

    async def list_leases(self) -> list[Lease]:
        return (await self.registry.list_leases()).leases

    # --- reservations ------------------------------------------------------------------

    async def reserve(self, subnet: IPv4Network, public_ip: IPv4Address) -> Lease:
        """Create a reservation (a key without etcd lease) for ``public_ip``.

        An existing lease of the same host becomes a reservation (its TTL is removed); a
        subnet held by another host is refused.
        """
        config = await self.get_network_config()
        if config.network is not None and not subnet.subnet_of(config.network):
            raise SubnetManagerError(
                f"reservation {subnet} is outside the flannel network {config.network}: "
                "reserve a subnet inside it"
            )
        if config.enable_ipv4 and subnet.prefixlen != config.subnet_len:
            raise SubnetManagerError(
                f"reservation {subnet} has prefix /{subnet.prefixlen} but SubnetLen is "
                f"{config.subnet_len}: reserve a /{config.subnet_len}"
            )
        attrs = LeaseAttrs(public_ip=public_ip)
        for _ in range(10):
            existing = await self.registry.get_lease(subnet)
            if existing is None:
                created = await self.registry.create(subnet, None, attrs, None)
                if created is not None:
                    return created
                continue
            if existing.attrs.public_ip != public_ip:
                raise SubnetManagerError(
                    f"subnet {subnet} is already leased to {existing.attrs.public_ip}: pick "
                    "another subnet or remove that lease first"
                )
            if existing.is_reservation:
                return existing
            updated = await self.registry.update(existing, existing.attrs, None)
            if updated is not None:
                return updated
        raise SubnetManagerError(
            f"could not reserve {subnet}: the key kept changing under us; try again"
        )

    async def unreserve(self, subnet: IPv4Network) -> None:
        """Delete the reservation for ``subnet`` (an ordinary lease is left alone)."""
        existing = await self.registry.get_lease(subnet)
        if existing is None:
            return
        if not existing.is_reservation:
            raise SubnetManagerError(
                f"{subnet} is an ordinary lease of {existing.attrs.public_ip}, not a "
                "reservation: nothing to unreserve"
            )
        if not await self.registry.delete(existing):
            raise SubnetManagerError(f"reservation {subnet} changed while removing it; try again")


if TYPE_CHECKING:

    def _conforms(manager: EtcdSubnetManager) -> SubnetManager:
        """mypy proves here that EtcdSubnetManager satisfies the SubnetManager protocol."""
        return manager
