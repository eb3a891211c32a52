"""What a backend is given and what it gives back: the public API for backend authors.

Lifecycle of one network (the plugin host calls only the plugin that provides the
configured ``Backend.Type``):

1. ``register_network(backend_type, ctx)``: validate options, prepare local state (devices),
   call ``await ctx.acquire_lease(...)`` exactly once with the backend's lease data, finish
   lease-dependent setup (e.g. a device address) and return a :class:`BackendNetwork`.
2. The host writes subnet.env with ``network.lease`` and ``network.mtu``.
3. ``run(network)`` runs as a task until cancelled (reconcile loops, data path). Cancellation
   is the one stop signal; clean up in ``finally``. Raising ends the network, which the host
   re-initialises with backoff.
4. ``handle_events(network, events)`` is awaited for every batch of peer events, one batch at
   a time, after ``run`` has started. The first batch holds every known peer as ``Added``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Protocol

from flannel.config import NetworkConfig
from flannel.lease import Lease
from flannel.metrics import Metrics

__all__ = [
    "AcquireLease",
    "BackendConfigError",
    "BackendContext",
    "BackendError",
    "BackendNetwork",
    "ExternalInterface",
]


class BackendError(RuntimeError):
    """A backend cannot set up or run; the message says what failed and what to do."""


class BackendConfigError(BackendError):
    """The ``Backend`` options in the network config are invalid (names key and value)."""


@dataclass(frozen=True)
class ExternalInterface:
    """The host's underlay interface and the addresses peers use to reach it."""

    name: str
    index: int
    mtu: int
    iface_addr: IPv4Address | None = None
    """The interface's own IPv4 address (what sockets bind to)."""
    iface_v6_addr: IPv6Address | None = None
    ext_addr: IPv4Address | None = None
    """The public IPv4 address published in the lease (``--public-ip``, else iface_addr)."""
    ext_v6_addr: IPv6Address | None = None


class AcquireLease(Protocol):
    def __call__(
        self,
        *,
        backend_type: str,
        backend_data: Any = None,
        backend_v6_data: Any = None,
    ) -> Awaitable[Lease]: ...


@dataclass
class BackendContext:
    """Everything ``register_network`` needs; built by the host for each (re)initialisation."""

    backend_type: str
    network: NetworkConfig
    ext_iface: ExternalInterface
    acquire_lease: AcquireLease
    """Acquire (or reuse) this host's lease with the given backend data; the host fills in
    the public addresses. Call it exactly once."""
    metrics: Metrics
    network_name: str = ""
    """"" for the default network; the name under ``--networks`` otherwise."""
    state_dir: Path = Path("/run/flannel")
    options: Mapping[str, Any] = field(default_factory=dict)
    """Daemon options a backend may read (e.g. ``ip_masq``), keyed by flag name."""

    @property
    def backend_options(self) -> Mapping[str, Any]:
        """The config's ``Backend`` object (keys as written, including ``Type``)."""
        return self.network.backend


@dataclass(eq=False)
class BackendNetwork:
    """A backend's running network. Subclass it to keep backend state."""

    backend_type: str
    lease: Lease
    mtu: int
    ctx: BackendContext
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str = ""
    """Set by the host just before it cancels ``run``: ``"shutdown"`` (the lease stays, a
    restart reuses it), ``"lease_lost"`` (deleted, expired or taken by another host) or
    ``"network_removed"``. Backends that own state outside this host (cloud routes) remove
    it unless the reason is ``"shutdown"``."""

    def lease_gone(self) -> bool:
        """Whether the subnet stopped being ours: the host said so, or the lease expired."""
        if self.stop_reason in ("lease_lost", "network_removed"):
            return True
        expiration = self.lease.expiration
        return expiration is not None and expiration <= time.time()

