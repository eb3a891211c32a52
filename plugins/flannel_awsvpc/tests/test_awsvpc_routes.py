"""aws-vpc against moto's EC2 server and fake metadata services, all on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import boto3
import pytest
from aws_fakes import CountingMotoServer, FakeImds, writes

import flannel_awsvpc
from flannel.backend import BackendContext, BackendError, ExternalInterface
from flannel.config import NetworkConfig
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel_awsvpc.network import AwsVpcNetwork

NETWORK = IPv4Network("10.244.0.0/16")


@dataclass
class Host:
    instance_id: str
    eni_id: str
    address: IPv4Address
    imds: FakeImds
    subnet: IPv4Network
    lease_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Vpc:
    ec2: Any
    vpc_id: str
    subnet_id: str
    main_table: str
    hosts: list[Host]


@pytest.fixture
def vpc(ec2_server: CountingMotoServer) -> Iterator[Vpc]:
    """A VPC with one subnet and two running instances, each with its own metadata service."""
    ec2 = boto3.client("ec2", endpoint_url=ec2_server.url, region_name="us-east-1")
    vpc_id = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="198.18.1.0/24")["Subnet"]["SubnetId"]
    instances = ec2.run_instances(
        ImageId="ami-12345678", MinCount=2, MaxCount=2, SubnetId=subnet_id
    )["Instances"]
    tables = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"]
    with ExitStack() as stack:
        hosts = [
            Host(
                instance_id=inst["InstanceId"],
                eni_id=inst["NetworkInterfaces"][0]["NetworkInterfaceId"],
                address=IPv4Address(inst["PrivateIpAddress"]),
                imds=stack.enter_context(FakeImds(inst["InstanceId"])),
                subnet=IPv4Network(f"10.244.{n + 1}.0/24"),
            )
            for n, inst in enumerate(instances)
        ]
        ec2_server.clear()
        yield Vpc(ec2, vpc_id, subnet_id, tables[0]["RouteTableId"], hosts)


def context(host: Host, ec2_url: str, **options: Any) -> BackendContext:
    backend = {
        "Type": "aws-vpc",
        "MetadataEndpoint": host.imds.url,
        "EC2Endpoint": ec2_url,
        "CheckInterval": 0,
        **options,
    }
    config = NetworkConfig(
        network=NETWORK,
        subnet_len=24,
        subnet_min=None,
        subnet_max=None,
        backend_type="aws-vpc",
        backend=backend,
    )

    async def acquire_lease(**kwargs: Any) -> Lease:
        host.lease_calls.append(kwargs)
        return Lease(host.subnet, LeaseAttrs(public_ip=host.address, backend_type=""))

    return BackendContext(
        backend_type="aws-vpc",
        network=config,
        ext_iface=ExternalInterface(name="eth0", index=2, mtu=9001, iface_addr=host.address),
        acquire_lease=acquire_lease,
        metrics=Metrics(),
    )


async def register(host: Host, ec2_url: str, **options: Any) -> AwsVpcNetwork:
    coro = flannel_awsvpc.register_network(
        backend_type="aws-vpc", ctx=context(host, ec2_url, **options)
    )
    assert coro is not None
    network = await coro
    assert isinstance(network, AwsVpcNetwork)
    return network


def routes(ec2: Any, table: str) -> dict[str, str]:
    """Destination -> target of the routes we could have made in ``table``."""
    reply = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
    return {
        r["DestinationCidrBlock"]: r.get("NetworkInterfaceId") or r.get("InstanceId") or ""
        for r in reply
        if r.get("Origin") == "CreateRoute"
    }


async def stop(network: AwsVpcNetwork, task: asyncio.Task[None], reason: str | None) -> None:
    if reason is not None:
        network.stop_reason = reason
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def start(network: AwsVpcNetwork) -> asyncio.Task[None]:
    coro = flannel_awsvpc.run(network=network)
    assert coro is not None
    return asyncio.ensure_future(coro)


async def test_two_hosts_each_route_their_subnet_to_their_own_eni(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, b = vpc.hosts
    net_a = await register(a, ec2_server.url)
    await register(b, ec2_server.url)

    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id, str(b.subnet): b.eni_id}
    assert net_a.mtu == 9001 and net_a.lease.subnet == a.subnet
    assert a.lease_calls == [{"backend_type": ""}] and b.lease_calls == [{"backend_type": ""}]
    enis = vpc.ec2.describe_network_interfaces(NetworkInterfaceIds=[a.eni_id, b.eni_id])
    assert [eni["SourceDestCheck"] for eni in enis["NetworkInterfaces"]] == [False, False]
    assert writes(ec2_server.counts()) == {"CreateRoute": 2, "ModifyNetworkInterfaceAttribute": 2}
    # IMDSv2 was used: the token PUT came first and every GET carried the token.
    assert a.imds.requests[0][:2] == ("PUT", "/latest/api/token")
    assert all(had_token for method, _, had_token in a.imds.requests if method == "GET")
    calls = net_a.ctx.metrics.counter("cloud_api_calls_total")
    assert calls.get(backend="aws-vpc", op="create_route") == 1


async def test_released_lease_withdraws_only_that_route(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, b = vpc.hosts
    net_a = await register(a, ec2_server.url)
    await register(b, ec2_server.url)
    task = start(net_a)
    await asyncio.sleep(0)
    await stop(net_a, task, reason="lease_lost")
    assert routes(vpc.ec2, vpc.main_table) == {str(b.subnet): b.eni_id}


async def test_plain_shutdown_keeps_the_route_and_restart_makes_no_changes(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, _ = vpc.hosts
    net_a = await register(a, ec2_server.url)
    task = start(net_a)
    await asyncio.sleep(0)
    await stop(net_a, task, reason=None)
    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id}

    ec2_server.clear()
    again = await register(a, ec2_server.url)
    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id}
    counts = ec2_server.counts()
    assert writes(counts) == {}, counts
    assert set(counts) == {"DescribeInstances", "DescribeRouteTables"}
    assert (
        again.ctx.metrics.counter("cloud_api_calls_total").get(backend="aws-vpc", op="create_route")
        == 0
    )


async def test_delete_route_on_shutdown_option(vpc: Vpc, ec2_server: CountingMotoServer) -> None:
    a, _ = vpc.hosts
    net_a = await register(a, ec2_server.url, DeleteRouteOnShutdown=True)
    task = start(net_a)
    await asyncio.sleep(0)
    await stop(net_a, task, reason=None)
    assert routes(vpc.ec2, vpc.main_table) == {}


async def test_route_pointing_elsewhere_is_replaced_without_a_delete(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, b = vpc.hosts
    vpc.ec2.create_route(
        RouteTableId=vpc.main_table, DestinationCidrBlock=str(a.subnet), NetworkInterfaceId=b.eni_id
    )
    ec2_server.clear()
    await register(a, ec2_server.url)
    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id}
    assert writes(ec2_server.counts()) == {"ReplaceRoute": 1, "ModifyNetworkInterfaceAttribute": 1}


async def test_stale_route_of_an_earlier_lease_is_removed_others_untouched(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, b = vpc.hosts
    for cidr, eni in (
        ("10.244.9.0/24", a.eni_id),
        ("192.168.7.0/24", a.eni_id),
        ("10.244.8.0/24", b.eni_id),
    ):
        vpc.ec2.create_route(
            RouteTableId=vpc.main_table, DestinationCidrBlock=cidr, NetworkInterfaceId=eni
        )
    await register(a, ec2_server.url)
    assert routes(vpc.ec2, vpc.main_table) == {
        str(a.subnet): a.eni_id,
        "192.168.7.0/24": a.eni_id,  # outside the flannel Network: not ours
        "10.244.8.0/24": b.eni_id,  # another host's route
    }


async def test_route_table_option_and_subnet_association(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, b = vpc.hosts
    extra = vpc.ec2.create_route_table(VpcId=vpc.vpc_id)["RouteTable"]["RouteTableId"]
    assoc = vpc.ec2.create_route_table(VpcId=vpc.vpc_id)["RouteTable"]["RouteTableId"]
    vpc.ec2.associate_route_table(RouteTableId=assoc, SubnetId=vpc.subnet_id)

    await register(a, ec2_server.url, RouteTableID=[vpc.main_table, extra])
    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id}
    assert routes(vpc.ec2, extra) == {str(a.subnet): a.eni_id}

    await register(b, ec2_server.url)  # default: the subnet's own table, not the main one
    assert routes(vpc.ec2, assoc) == {str(b.subnet): b.eni_id}
    assert str(b.subnet) not in routes(vpc.ec2, vpc.main_table)


async def test_missing_route_table_is_named(vpc: Vpc, ec2_server: CountingMotoServer) -> None:
    a, _ = vpc.hosts
    with pytest.raises(BackendError, match=r"rtb-0123456789abcdef0 does not exist.*RouteTableID"):
        await register(a, ec2_server.url, RouteTableID=[vpc.main_table, "rtb-0123456789abcdef0"])


async def test_imdsv1_fallback(vpc: Vpc, ec2_server: CountingMotoServer) -> None:
    a, _ = vpc.hosts
    a.imds.mode = "v1"
    await register(a, ec2_server.url)
    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id}
    gets = [r for r in a.imds.requests if r[0] == "GET"]
    assert gets and not any(had_token for _, _, had_token in gets)


async def test_no_metadata_server_fails_clearly_before_any_lease(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, _ = vpc.hosts
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ctx = context(a, ec2_server.url, MetadataEndpoint=dead)
    coro = flannel_awsvpc.register_network(backend_type="aws-vpc", ctx=ctx)
    assert coro is not None
    with pytest.raises(BackendError) as info:
        await coro
    message = str(info.value)
    assert message.startswith("aws-vpc: no EC2 instance metadata service answered at " + dead)
    assert "/latest/api/token" in message and "FLANNEL_AWS_METADATA_URL" in message
    assert a.lease_calls == [] and ec2_server.counts() == {}


async def test_interface_address_not_on_the_instance(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, _ = vpc.hosts
    a.address = IPv4Address("198.18.200.200")
    with pytest.raises(
        BackendError, match=r"no network interface with address 198\.18\.200\.200.*--iface"
    ):
        await register(a, ec2_server.url)
    assert a.lease_calls == []


def test_metadata_env_variable_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from flannel_awsvpc.options import parse_options

    monkeypatch.setenv("FLANNEL_AWS_METADATA_URL", "http://127.0.0.1:1234/")
    assert parse_options({"Type": "aws-vpc"}).metadata_url == "http://127.0.0.1:1234"
    explicit = parse_options({"Type": "aws-vpc", "MetadataEndpoint": "http://127.0.0.1:9"})
    assert explicit.metadata_url == "http://127.0.0.1:9"


def test_events_are_ignored_and_type_is_declared() -> None:
    assert list(flannel_awsvpc.backend_types()) == ["aws-vpc"]
    assert flannel_awsvpc.register_network(backend_type="vxlan", ctx=None) is None  # type: ignore[arg-type]
    from flannel.backend import BackendNetwork
    from flannel.events import Event

    peer = Lease(IPv4Network("10.244.9.0/24"), LeaseAttrs(public_ip=IPv4Address("198.18.1.99")))
    network = BackendNetwork("aws-vpc", peer, 1500, ctx=None)  # type: ignore[arg-type]
    assert flannel_awsvpc.handle_events(network=network, events=[Event.added(peer)]) is None
    assert flannel_awsvpc.run(network=network) is None  # not one of ours: nothing to run


async def test_imdsv2_required_without_a_token_explains_the_hop_limit(
    vpc: Vpc, ec2_server: CountingMotoServer
) -> None:
    a, _ = vpc.hosts
    a.imds.mode = "v2-required"
    await register(a, ec2_server.url)  # with a token: fine
    assert all(had_token for method, _, had_token in a.imds.requests if method == "GET")

    a.imds.mode = "hop-limit"  # no token comes back, and token-less GETs get 401
    with pytest.raises(BackendError, match=r"HTTP 401; IMDSv2 is required.*hop limit to 2"):
        await register(a, ec2_server.url)


async def test_ec2_endpoint_from_the_standard_environment_variable(
    vpc: Vpc, ec2_server: CountingMotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = vpc.hosts
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", ec2_server.url)
    ctx = context(a, ec2_server.url)
    del ctx.network.backend["EC2Endpoint"]
    coro = flannel_awsvpc.register_network(backend_type="aws-vpc", ctx=ctx)
    assert coro is not None
    await coro
    assert routes(vpc.ec2, vpc.main_table) == {str(a.subnet): a.eni_id}
