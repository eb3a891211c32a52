"""flannel's gce backend: each host's pod subnet is a route in the project's VPC network.

No encapsulation: the route ``flannel-10-244-5-0-24: 10.244.5.0/24 -> this instance`` makes
Google's network carry pod traffic. Each host programs only its own route, so peer events are
ignored. Importing this module is cheap; google-auth and requests load only when a network
registers.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from flannel.hookspecs import hookimpl

if TYPE_CHECKING:
    from flannel.backend import BackendContext, BackendNetwork
    from flannel.events import Event

__all__ = ["backend_types", "handle_events", "register_network", "run"]
__version__ = "0.1.0"

log = logging.getLogger(__name__)

BACKEND_TYPE = "gce"


@hookimpl
def backend_types() -> Sequence[str]:
    return [BACKEND_TYPE]


@hookimpl
def register_network(
    backend_type: str, ctx: BackendContext
) -> Coroutine[Any, Any, BackendNetwork] | None:
    """Set up this host's route; None for other types (safe under any hook dispatch)."""
    if backend_type.lower() != BACKEND_TYPE:
        return None
    from flannel_gce.network import register

    return register(ctx)


@hookimpl
def run(network: BackendNetwork) -> Coroutine[Any, Any, None] | None:
    from flannel_gce.network import GceNetwork, run

    return run(network) if isinstance(network, GceNetwork) else None


@hookimpl
def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None:
    """Nothing to do: every host routes only its own subnet, the VPC does the rest."""
    if network.backend_type == BACKEND_TYPE:
        log.debug("gce: ignoring %d peer event(s)", len(events))
