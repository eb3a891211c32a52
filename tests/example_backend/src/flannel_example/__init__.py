"""Example flannel backend: leases a subnet with backend data, programs nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flannel.backend import BackendContext, BackendNetwork
from flannel.events import Event
from flannel.hookspecs import hookimpl

log = logging.getLogger("flannel_example")


@hookimpl
def backend_types() -> Sequence[str]:
    return ["example"]


@hookimpl
async def register_network(backend_type: str, ctx: BackendContext) -> BackendNetwork:
    greeting = str(ctx.backend_options.get("Greeting", "hello"))
    lease = await ctx.acquire_lease(backend_type="example", backend_data={"Greeting": greeting})
    return BackendNetwork(backend_type="example", lease=lease, mtu=ctx.ext_iface.mtu, ctx=ctx)


@hookimpl
def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None:
    for event in events:
        log.info("peer %s %s", event.type.value, event.lease.subnet)
