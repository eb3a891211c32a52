"""flannel's udp backend: pod traffic in UDP datagrams between hosts, for networks where
VXLAN is not available. Wire-compatible with Go flanneld's udp backend (the payload is the
bare IP packet, port 8285), with a batched C data path and a pure-Python fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

from flannel.backend import BackendContext, BackendNetwork
from flannel.events import Event
from flannel.hookspecs import hookimpl
from flannel_udp import network as _network

__all__ = ["backend_types", "handle_events", "register_network", "run"]

__version__ = "0.1.0"


@hookimpl
def backend_types() -> Sequence[str]:
    return [_network.TYPE]


@hookimpl
async def register_network(backend_type: str, ctx: BackendContext) -> BackendNetwork:
    return await _network.register(ctx)


@hookimpl
async def run(network: BackendNetwork) -> None:
    assert isinstance(network, _network.UdpNetwork)
    await _network.run(network)


@hookimpl
def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None:
    assert isinstance(network, _network.UdpNetwork)
    _network.apply_events(network, events)
