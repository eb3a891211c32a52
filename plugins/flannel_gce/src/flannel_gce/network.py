"""The gce network: register (metadata, auth, lease, route) and run (check, withdraw)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from flannel.backend import BackendConfigError, BackendContext, BackendError, BackendNetwork
from flannel.ownroute import hold_own_route
from flannel_gce.auth import authorized_session
from flannel_gce.compute import ComputeClient
from flannel_gce.metadata import GceIdentity, MetadataClient
from flannel_gce.options import GceOptions, parse_options
from flannel_gce.routes import GceRoutes

__all__ = ["GceNetwork", "register", "run"]

log = logging.getLogger(__name__)

BACKEND_TYPE = "gce"


@dataclass(eq=False)
class GceNetwork(BackendNetwork):
    options: GceOptions = field(kw_only=True)
    identity: GceIdentity = field(kw_only=True)
    routes: GceRoutes = field(kw_only=True)
    cidr: IPv4Network = field(kw_only=True)

    @property
    def subnet(self) -> IPv4Network:
        assert self.lease.subnet is not None
        return self.lease.subnet


async def register(ctx: BackendContext) -> GceNetwork:
    options = parse_options(ctx.backend_options)
    cidr = ctx.network.network
    if cidr is None:
        raise BackendConfigError(
            "gce: the network config has no IPv4 Network; gce routes IPv4 pod subnets only "
            "(set Network, or use another backend for IPv6-only)"
        )
    if ctx.network.enable_ipv6:
        log.warning("gce: routes IPv4 only; the IPv6 subnet is not programmed as a GCE route")
    calls = ctx.metrics.counter("cloud_api_calls_total", "Cloud API calls made by a backend")

    def count(op: str) -> None:
        calls.inc(backend=BACKEND_TYPE, op=op)

    metadata = await asyncio.to_thread(MetadataClient, options.metadata_url)
    identity = await asyncio.to_thread(metadata.identity)
    session = await asyncio.to_thread(authorized_session, metadata)
    api = ComputeClient(session, options.compute_url, identity.project, count)
    network_doc = await asyncio.to_thread(api.get_network, identity.network)
    instance_doc = await asyncio.to_thread(api.get_instance, identity.zone, identity.instance)
    if instance_doc.get("canIpForward") is False:
        log.warning(
            "gce: instance %s was created without --can-ip-forward: GCE drops pod traffic "
            "to and from it until it is recreated with IP forwarding",
            identity.instance,
        )
    routes = GceRoutes(
        api,
        network_link=str(network_doc["selfLink"]),
        instance_link=str(instance_doc["selfLink"]),
        operation_timeout=options.operation_timeout,
    )
    log.info(
        "gce: project %s, network %s, instance %s in %s",
        identity.project,
        identity.network,
        identity.instance,
        identity.zone,
    )

    lease = await ctx.acquire_lease(backend_type="")
    if lease.subnet is None:
        raise BackendError("gce: the lease has no IPv4 subnet; gce routes IPv4 only")
    network = GceNetwork(
        backend_type=BACKEND_TYPE,
        lease=lease,
        mtu=ctx.ext_iface.mtu,
        ctx=ctx,
        options=options,
        identity=identity,
        routes=routes,
        cidr=cidr,
    )
    await routes.remove_stale(network.subnet, cidr)
    await routes.ensure(network.subnet)
    return network


async def run(network: GceNetwork) -> None:
    """Re-check the route now and then until cancelled; withdraw it if the lease is gone."""
    await hold_own_route(
        network,
        ensure=lambda: network.routes.ensure(network.subnet),
        withdraw=lambda: network.routes.withdraw(network.subnet),
        check_interval=network.options.check_interval,
        withdraw_on_shutdown=network.options.delete_route_on_shutdown,
    )
