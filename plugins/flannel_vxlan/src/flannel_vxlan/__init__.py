"""flannel's vxlan backend: the kernel encapsulates, we program it; wire-compatible with
flanneld v0.20+ (same device, lease BackendData and per-peer entries).

Options (``Backend`` in the network config, keys case-insensitive): ``VNI`` (1), ``Port``
(0 = kernel default 8472), ``GBP``, ``Learning``, ``DirectRouting`` (false), ``MTU``
(interface MTU - 50, - 70 on an IPv6 underlay) and ``ReconcileInterval`` (10 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from flannel.backend import BackendContext, BackendError, BackendNetwork
from flannel.events import Event
from flannel.hookspecs import hookimpl
from flannel_vxlan.device import Device, DeviceSpec, device_name, ensure_address, ensure_device
from flannel_vxlan.network import VxlanNetwork
from flannel_vxlan.options import VxlanOptions, device_mtu, parse_options
from flannel_vxlan.plan import BACKEND_TYPE

__all__ = ["BACKEND_TYPE", "VxlanNetwork", "VxlanOptions", "parse_options"]


@hookimpl
def backend_types() -> Sequence[str]:
    return [BACKEND_TYPE]


def _specs(ctx: BackendContext, options: VxlanOptions) -> list[DeviceSpec]:
    ext = ctx.ext_iface
    config = ctx.network
    specs = []
    for ipv6, enabled, local in (
        (False, config.enable_ipv4, ext.iface_addr),
        (True, config.enable_ipv6, ext.iface_v6_addr),
    ):
        if not enabled:
            continue
        if local is None:
            family = "IPv6" if ipv6 else "IPv4"
            raise BackendError(
                f"vxlan needs an {family} address on interface {ext.name} for the "
                f"{device_name(options.vni, ipv6)} tunnel: add one or pick another --iface"
            )
        specs.append(
            DeviceSpec(
                name=device_name(options.vni, ipv6),
                vni=options.vni,
                local=local,
                link_index=ext.index,
                port=options.effective_port,
                learning=options.learning,
                gbp=options.gbp,
                mtu=device_mtu(options, ext.name, ext.mtu, ipv6_underlay=ipv6),
            )
        )
    if not specs:
        raise BackendError("vxlan has nothing to do: the network enables neither IPv4 nor IPv6")
    return specs


def _backend_data(options: VxlanOptions, device: Device | None) -> dict[str, Any] | None:
    # Exactly flanneld's shape; VNI as the full number (flanneld v0.20 wraps it at 65535).
    return None if device is None else {"VNI": options.vni, "VtepMAC": device.mac}


@hookimpl
async def register_network(backend_type: str, ctx: BackendContext) -> BackendNetwork:
    options = parse_options(ctx.backend_options)
    devices: dict[int, Device] = {}
    for spec in _specs(ctx, options):
        devices[spec.family] = await asyncio.to_thread(ensure_device, spec)
    lease = await ctx.acquire_lease(
        backend_type=BACKEND_TYPE,
        backend_data=_backend_data(options, devices.get(4)),
        backend_v6_data=_backend_data(options, devices.get(6)),
    )
    config = ctx.network
    if 4 in devices:
        if lease.subnet is None:
            raise BackendError(f"the lease {lease.key} has no IPv4 subnet for {devices[4].name}")
        await asyncio.to_thread(ensure_address, devices[4].index, lease.subnet, config.network)
    if 6 in devices:
        if lease.ipv6_subnet is None:
            raise BackendError(
                f"the lease {lease.key} has no IPv6 subnet for {devices[6].name}: set "
                "IPv6Network in the network config or disable EnableIPv6"
            )
        await asyncio.to_thread(
            ensure_address, devices[6].index, lease.ipv6_subnet, config.ipv6_network
        )
    mtu = min(device.mtu for device in devices.values())
    return VxlanNetwork.create(ctx, lease, options, devices, mtu)


def _vxlan(network: BackendNetwork) -> VxlanNetwork:
    if not isinstance(network, VxlanNetwork):
        raise BackendError(f"vxlan was handed a {type(network).__name__}, not its own network")
    return network


@hookimpl
async def run(network: BackendNetwork) -> None:
    await _vxlan(network).run()


@hookimpl
async def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None:
    await _vxlan(network).handle_events(events)
