"""The subnet manager contract: what the network lifecycle needs from a lease store.

:class:`SubnetManager` is implemented over etcd v3 (:mod:`flannel.etcd_manager`) and, for
client/server mode, over HTTP. The lifecycle (:mod:`flannel.network`) and the CLI only use
this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Protocol

from flannel.config import NetworkConfig
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs

__all__ = [
    "ConfigNotFound",
    "LeaseLost",
    "OutOfSubnets",
    "PreviousSubnets",
    "SubnetManager",
    "SubnetManagerError",
]


class SubnetManagerError(RuntimeError):
    """A lease store operation failed; the message says what and what to do."""


class ConfigNotFound(SubnetManagerError):
    """No network config at ``<prefix>/config`` (yet)."""


class OutOfSubnets(SubnetManagerError):
    """Every subnet in [SubnetMin, SubnetMax] is leased or reserved."""


class LeaseLost(SubnetManagerError):
    """Our lease key was deleted, expired or now belongs to another host."""


@dataclass(frozen=True)
class PreviousSubnets:
    """The subnets recorded in the previous subnet.env (a reuse hint after restarts)."""

    subnet: IPv4Network | None = None
    ipv6_subnet: IPv6Network | None = None


class SubnetManager(Protocol):
    async def get_network_config(self) -> NetworkConfig:
        """Read and validate the network config (raises ConfigNotFound / ConfigError)."""
        ...

    async def acquire_lease(
        self, config: NetworkConfig, attrs: LeaseAttrs, previous: PreviousSubnets | None = None
    ) -> Lease:
        """Reuse our lease (same public IP), else the previous subnet, else allocate one.

        Retries lost creation races with a fresh pick; raises OutOfSubnets when full.
        """
        ...

    async def renew_lease(self, lease: Lease) -> Lease:
        """Extend our lease only if the key still holds it (CAS); raises LeaseLost if not."""
        ...

    def watch_leases(self, own: Lease | None) -> AsyncIterator[Sequence[Event]]:
        """Batches of peer events, ``own`` excluded, forever; never loses an event.

        The first batch is the full list of peers as ``Added`` (possibly empty). Removed
        events carry the last known attributes.
        """
        ...

    async def wait_lease_lost(self, lease: Lease) -> None:
        """Return when ``lease`` is deleted, expires or is taken over by another host."""
        ...

    async def list_leases(self) -> list[Lease]:
        """Every lease and reservation under ``<prefix>/subnets`` (malformed ones skipped)."""
        ...

    async def reserve(self, subnet: IPv4Network, public_ip: IPv4Address) -> Lease:
        """Create a reservation: a lease with no TTL that is never reassigned."""
        ...

    async def unreserve(self, subnet: IPv4Network) -> None:
        """Turn a reservation back into nothing (the key is deleted)."""
        ...

    async def close(self) -> None: ...
