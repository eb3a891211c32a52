"""The alloc backend: takes a lease and nothing else (no data path).

Useful when something else programs the data path from subnet.env. It is published
through the ``flannel`` entry-point group exactly like an external backend plugin.
"""

from __future__ import annotations

from collections.abc import Sequence

from flannel.backend import BackendContext, BackendNetwork
from flannel.events import Event
from flannel.hookspecs import hookimpl

TYPE = "alloc"


@hookimpl
def backend_types() -> Sequence[str]:
    return [TYPE]


@hookimpl
async def register_network(backend_type: str, ctx: BackendContext) -> BackendNetwork:
    # flanneld's alloc lease carries only the public address: no BackendType, no data.
    lease = await ctx.acquire_lease(backend_type="")
    return BackendNetwork(backend_type=TYPE, lease=lease, mtu=ctx.ext_iface.mtu, ctx=ctx)


@hookimpl
def run(network: BackendNetwork) -> None:
    """Nothing to run: the lease is all there is."""


@hookimpl
def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None:
    """Peers need no programming without a data path."""
