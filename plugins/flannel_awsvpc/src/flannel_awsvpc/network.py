"""The aws-vpc network: register (metadata, ENI, lease, route) and run (check, withdraw)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from flannel.backend import BackendConfigError, BackendContext, BackendError, BackendNetwork
from flannel.ownroute import hold_own_route
from flannel_awsvpc.ec2 import Ec2Routes, make_client
from flannel_awsvpc.imds import fetch_identity
from flannel_awsvpc.options import AwsVpcOptions, parse_options
from flannel_awsvpc.plan import Target

__all__ = ["AwsVpcNetwork", "register", "run"]

log = logging.getLogger(__name__)

BACKEND_TYPE = "aws-vpc"


@dataclass(eq=False)
class AwsVpcNetwork(BackendNetwork):
    options: AwsVpcOptions = field(kw_only=True)
    routes: Ec2Routes = field(kw_only=True)
    target: Target = field(kw_only=True)
    tables: tuple[str, ...] = field(kw_only=True)
    cidr: IPv4Network = field(kw_only=True)
    """The flannel Network (routes inside it that point at us are ours to clean)."""

    @property
    def subnet(self) -> IPv4Network:
        assert self.lease.subnet is not None
        return self.lease.subnet

    async def ensure_route(self) -> None:
        """Make every table route our subnet to our ENI (no API writes when already right)."""
        await asyncio.to_thread(
            self.routes.ensure, self.tables, self.subnet, self.cidr, self.target
        )

    async def withdraw_route(self) -> int:
        """Delete our subnet's route from every table where it still points at us."""
        return await asyncio.to_thread(self.routes.withdraw, self.tables, self.subnet, self.target)


async def register(ctx: BackendContext) -> AwsVpcNetwork:
    options = parse_options(ctx.backend_options)
    cidr = ctx.network.network
    if cidr is None:
        raise BackendConfigError(
            "aws-vpc: the network config has no IPv4 Network; aws-vpc routes IPv4 pod "
            "subnets only (set Network, or use another backend for IPv6-only)"
        )
    if ctx.network.enable_ipv6:
        log.warning("aws-vpc: routes IPv4 only; the IPv6 subnet is not programmed in VPC tables")
    iface_addr = ctx.ext_iface.iface_addr
    if iface_addr is None:
        raise BackendError(
            f"aws-vpc: interface {ctx.ext_iface.name} has no IPv4 address; choose the VPC "
            f"interface with --iface"
        )
    calls = ctx.metrics.counter("cloud_api_calls_total", "Cloud API calls made by a backend")

    def count(op: str) -> None:
        calls.inc(backend=BACKEND_TYPE, op=op)

    identity = await asyncio.to_thread(fetch_identity, options.metadata_url)
    client = await asyncio.to_thread(make_client, identity.region, options.ec2_endpoint)
    routes = Ec2Routes(client, identity.instance_id, count)
    target, eni = await asyncio.to_thread(routes.find_target, iface_addr)
    await asyncio.to_thread(routes.disable_source_dest_check, eni)
    tables = options.route_table_ids or await asyncio.to_thread(routes.default_tables, eni)
    log.info(
        "aws-vpc: instance %s, ENI %s, region %s, route tables %s",
        identity.instance_id,
        target.eni_id,
        identity.region,
        ", ".join(tables),
    )

    lease = await ctx.acquire_lease(backend_type="")
    if lease.subnet is None:
        raise BackendError("aws-vpc: the lease has no IPv4 subnet; aws-vpc routes IPv4 only")
    network = AwsVpcNetwork(
        backend_type=BACKEND_TYPE,
        lease=lease,
        mtu=ctx.ext_iface.mtu,
        ctx=ctx,
        options=options,
        routes=routes,
        target=target,
        tables=tables,
        cidr=cidr,
    )
    await network.ensure_route()
    return network


async def run(network: AwsVpcNetwork) -> None:
    """Re-check the route now and then until cancelled; withdraw it if the lease is gone."""
    await hold_own_route(
        network,
        ensure=network.ensure_route,
        withdraw=network.withdraw_route,
        check_interval=network.options.check_interval,
        withdraw_on_shutdown=network.options.delete_route_on_shutdown,
    )
