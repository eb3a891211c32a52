"""flannel's host-gw backend: each peer subnet is routed via that peer's host address.

No encapsulation, so no MTU overhead, but every host must sit on one L2 segment. Options
(``Backend`` in the network config): ``Type: "host-gw"``, ``ReconcileInterval`` (seconds
between reconcile passes, default 10, as flanneld's route check).
"""

from __future__ import annotations

from collections.abc import Sequence

from flannel.backend import BackendContext, BackendError, BackendNetwork
from flannel.events import Event
from flannel.hookspecs import hookimpl
from flannel_hostgw.network import BACKEND_TYPE, HostGWNetwork, HostGWOptions, parse_options

__all__ = ["BACKEND_TYPE", "HostGWNetwork", "HostGWOptions", "parse_options"]

NAT_ERROR = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which "
    "is not supported by host-gw backend"
)


@hookimpl
def backend_types() -> Sequence[str]:
    return [BACKEND_TYPE]


@hookimpl
async def register_network(backend_type: str, ctx: BackendContext) -> BackendNetwork:
    options = parse_options(ctx.backend_options)
    ext = ctx.ext_iface
    if ext.ext_addr is not None and ext.iface_addr is not None and ext.ext_addr != ext.iface_addr:
        raise BackendError(
            f"{NAT_ERROR} (public IP {ext.ext_addr}, {ext.name} has {ext.iface_addr}): "
            "drop --public-ip or use a backend that encapsulates (vxlan)"
        )
    if (
        ext.ext_v6_addr is not None
        and ext.iface_v6_addr is not None
        and ext.ext_v6_addr != ext.iface_v6_addr
    ):
        raise BackendError(
            f"{NAT_ERROR} (public IPv6 {ext.ext_v6_addr}, {ext.name} has {ext.iface_v6_addr}): "
            "drop --public-ipv6 or use a backend that encapsulates (vxlan)"
        )
    lease = await ctx.acquire_lease(backend_type=BACKEND_TYPE)
    return HostGWNetwork.create(ctx, lease, options)


def _hostgw(network: BackendNetwork) -> HostGWNetwork:
    if not isinstance(network, HostGWNetwork):
        raise BackendError(f"host-gw was handed a {type(network).__name__}, not its own network")
    return network


@hookimpl
async def run(network: BackendNetwork) -> None:
    await _hostgw(network).run()


@hookimpl
async def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None:
    await _hostgw(network).handle_events(events)
