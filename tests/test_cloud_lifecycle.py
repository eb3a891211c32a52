"""aws-vpc and gce under core's real lifecycle: leases in a real etcd, plugins loaded from
their entry points, clouds faked on loopback (moto's EC2 server, the fake Compute API)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import aetcd
import pytest

from flannel.backend import ExternalInterface
from flannel.config import NetworkConfig
from flannel.etcd import EtcdClientConfig
from flannel.etcd_manager import EtcdSubnetManager
from flannel.lease import Lease
from flannel.network import LifecycleSettings, NetworkLifecycle
from flannel.plugins.host import PluginHost
from flannel.subnetenv import write_subnet_env
from flannel.testing.etcd import EtcdServer

ROOT = Path(__file__).resolve().parents[1]
for _tests in ("plugins/flannel_awsvpc/tests", "plugins/flannel_gce/tests"):
    if str(ROOT / _tests) not in sys.path:
        sys.path.insert(0, str(ROOT / _tests))

import boto3  # noqa: E402  (test deps: flannel-awsvpc[test])
from aws_fakes import CountingMotoServer, FakeImds, writes  # noqa: E402
from gce_fakes import FakeCompute, FakeMetadata  # noqa: E402

from flannel.testing.netguard import loopback_only  # noqa: E402

__all__ = ["loopback_only"]
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("loopback_only")]

PREFIX = "/coreos.com/network"
NETWORK = IPv4Network("10.244.0.0/16")


@pytest.fixture(autouse=True)
def cloud_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2",
                 "GOOGLE_APPLICATION_CREDENTIALS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                 "https_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("flannel_gce.routes.FIRST_POLL", 0.01)
    monkeypatch.setattr("flannel_gce.metadata.TIMEOUT", (10.0, 10.0))  # a loaded test machine
    monkeypatch.setattr("flannel_awsvpc.imds.TIMEOUT", 10.0)


@pytest.fixture
def plugin_host() -> PluginHost:
    host = PluginHost.load(env={})
    for backend_type, dist in (("aws-vpc", "flannel-awsvpc"), ("gce", "flannel-gce")):
        assert host.provider(backend_type).distribution == dist
    return host


class Site:
    """One host's daemon pieces around a real etcd."""

    def __init__(self, etcd: EtcdServer, host: PluginHost, tmp: Path, address: IPv4Address) -> None:
        self.etcd, self.host, self.tmp, self.address = etcd, host, tmp, address

    async def put_config(self, backend: dict[str, Any]) -> None:
        doc = {"Network": str(NETWORK), "Backend": backend}
        async with aetcd.Client(host=self.etcd.host, port=self.etcd.port) as client:
            await client.put(f"{PREFIX}/config".encode(), json.dumps(doc).encode())

    async def leases(self) -> dict[str, Any]:
        async with aetcd.Client(host=self.etcd.host, port=self.etcd.port) as client:
            result = await client.get_prefix(f"{PREFIX}/subnets/".encode())
            return {kv.key.decode().rsplit("/", 1)[1]: json.loads(kv.value) for kv in result}

    async def delete_lease(self, key: str) -> None:
        async with aetcd.Client(host=self.etcd.host, port=self.etcd.port) as client:
            await client.delete(f"{PREFIX}/subnets/{key}".encode())

    @asynccontextmanager
    async def daemon(self) -> AsyncIterator[NetworkLifecycle]:
        """A running lifecycle (ready when entered), cancelled like a SIGTERM on exit."""
        manager = EtcdSubnetManager(EtcdClientConfig(endpoints=(self.etcd.endpoint,)), PREFIX)
        ext = ExternalInterface(
            name="eth0", index=2, mtu=9001, iface_addr=self.address, ext_addr=self.address
        )

        async def find_interface(config: NetworkConfig) -> ExternalInterface:
            return ext

        def write_env(config: NetworkConfig, lease: Lease, mtu: int) -> None:
            write_subnet_env(self.tmp / "subnet.env", config, lease, mtu, False)

        settings = LifecycleSettings(backoff_base=0.05, backoff_cap=0.5, state_dir=self.tmp)
        lifecycle = NetworkLifecycle(
            manager, self.host, find_interface, write_env, settings=settings
        )
        task = asyncio.create_task(lifecycle.run())
        try:
            ready = asyncio.create_task(lifecycle.readiness.ready_event.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                ready.cancel()
                task.result()  # raises why it stopped
            yield lifecycle
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await manager.close()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll until true (pytest-timeout is the safety net; nothing here is timed)."""
    while not await check():  # noqa: ASYNC110 (state lives in another component)
        await asyncio.sleep(0.05)


# -- aws-vpc -------------------------------------------------------------------------------


@pytest.fixture
def ec2_server() -> Iterator[CountingMotoServer]:
    server = CountingMotoServer()
    server.start()
    try:
        server.reset()
        yield server
    finally:
        server.stop()


async def test_aws_vpc_route_follows_the_etcd_lease_and_restarts_without_churn(
    etcd_server: EtcdServer,
    plugin_host: PluginHost,
    ec2_server: CountingMotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ec2 = boto3.client("ec2", endpoint_url=ec2_server.url, region_name="us-east-1")
    vpc_id = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="198.18.1.0/24")["Subnet"]["SubnetId"]
    inst = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, SubnetId=subnet_id)[
        "Instances"
    ][0]
    eni = inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
    table = ec2.describe_route_tables(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "association.main", "Values": ["true"]},
        ]
    )["RouteTables"][0]["RouteTableId"]

    def routes() -> dict[str, str]:
        reply = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
        return {r["DestinationCidrBlock"]: r.get("NetworkInterfaceId", "") for r in reply
                if r.get("Origin") == "CreateRoute"}  # fmt: skip

    site = Site(etcd_server, plugin_host, tmp_path, IPv4Address(inst["PrivateIpAddress"]))
    await site.put_config({"Type": "aws-vpc", "EC2Endpoint": ec2_server.url, "CheckInterval": 0})
    with FakeImds(inst["InstanceId"]) as imds:
        monkeypatch.setenv("FLANNEL_AWS_METADATA_URL", imds.url)
        async with site.daemon() as daemon:
            assert daemon.network is not None and daemon.network.lease.subnet is not None
            subnet = str(daemon.network.lease.subnet)
            key = daemon.network.lease.key
            assert routes() == {subnet: eni}
            # A cloud lease carries only the public IP, as flanneld's aws-vpc leases.
            assert await site.leases() == {key: {"PublicIP": str(site.address), "PublicIPv6": None}}
        assert routes() == {subnet: eni}  # a plain stop keeps the route (and the lease)

        ec2_server.clear()
        async with site.daemon() as daemon:
            assert daemon.network is not None and daemon.network.lease.key == key
            assert writes(ec2_server.counts()) == {}

            # The lease disappears: the lifecycle re-acquires and the route follows it.
            await site.delete_lease(key)
            await until(lambda: _generation(daemon, 2))
            assert daemon.network is not None
            assert routes() == {str(daemon.network.lease.subnet): eni}


async def _generation(daemon: NetworkLifecycle, wanted: int) -> bool:
    return daemon.generation >= wanted and daemon.readiness.ready_event.is_set()


# -- gce -----------------------------------------------------------------------------------


async def test_gce_route_follows_the_etcd_lease_and_restarts_without_churn(
    etcd_server: EtcdServer,
    plugin_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compute = FakeCompute()
    compute.add_network("default")
    inst = compute.add_instance("europe-west1-b", "node-1")
    metadata = FakeMetadata(compute, "europe-west1-b", "node-1", "default")
    try:
        monkeypatch.setenv("FLANNEL_GCE_METADATA_URL", metadata.url)
        site = Site(etcd_server, plugin_host, tmp_path, IPv4Address("198.18.1.11"))
        await site.put_config({"Type": "gce", "ComputeEndpoint": compute.url, "CheckInterval": 0})

        def hops() -> dict[str, str]:
            return {r["destRange"]: r["nextHopInstance"] for r in compute.routes.values()}

        async with site.daemon() as daemon:
            assert daemon.network is not None
            subnet, key = str(daemon.network.lease.subnet), daemon.network.lease.key
            assert hops() == {subnet: inst["selfLink"]}
            assert await site.leases() == {key: {"PublicIP": "198.18.1.11", "PublicIPv6": None}}
        assert hops() == {subnet: inst["selfLink"]}

        compute.clear()
        async with site.daemon() as daemon:
            assert daemon.network is not None and daemon.network.lease.key == key
            counts = compute.counts()
            assert "routes.insert" not in counts and "routes.delete" not in counts, counts
    finally:
        metadata.close()
        compute.close()
