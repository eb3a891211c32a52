"""Hold a route that lives outside this host (a cloud route table) for our own subnet.

Cloud backends program one route per host, ``<our subnet> -> this instance``, in the cloud's
route table. :func:`hold_own_route` is their ``run``: it re-checks the route now and then
(someone may have changed it) and, when the network stops, withdraws it if the subnet is no
longer ours (``BackendNetwork.lease_gone()``) or the operator asked for it. A plain restart
keeps the route, so pods stay reachable while the daemon is down.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from flannel.backend import BackendError, BackendNetwork

__all__ = ["hold_own_route"]

log = logging.getLogger("flannel.ownroute")


async def hold_own_route(
    network: BackendNetwork,
    *,
    ensure: Callable[[], Awaitable[object]],
    withdraw: Callable[[], Awaitable[object]],
    check_interval: float,
    withdraw_on_shutdown: bool = False,
) -> None:
    """Run until cancelled: ``ensure()`` every ``check_interval`` s (0 = never), jittered by
    10 %; on stop, ``withdraw()`` when the lease is gone or ``withdraw_on_shutdown``.
    A failing check is logged and retried next period (it never ends the network)."""
    name = network.backend_type
    subnet = network.lease.subnet
    try:
        if check_interval <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(check_interval * random.uniform(0.9, 1.1))
            try:
                await ensure()
            except BackendError as exc:
                log.warning("%s (will check again in about %.0f s)", exc, check_interval)
    finally:
        if withdraw_on_shutdown or network.lease_gone():
            try:
                if await withdraw():
                    log.info("%s: withdrew the route for %s", name, subnet)
            except BackendError as exc:
                log.warning("%s: could not withdraw the route for %s: %s", name, subnet, exc)
