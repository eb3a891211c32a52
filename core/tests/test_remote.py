"""Client/server mode: RemoteSubnetManager <-> RemoteServer <-> EtcdSubnetManager <-> real etcd."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.etcd import EtcdClientConfig
from flannel.etcd_manager import EtcdSubnetManager
from flannel.events import EventType
from flannel.lease import LeaseAttrs
from flannel.manager import LeaseLost, SubnetManagerError
from flannel.remote.client import RemoteSubnetManager
from flannel.remote.http import request
from flannel.remote.server import RemoteServer, server_ssl_context
from flannel.testing.etcd import EtcdServer

CONFIG = {"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}


@pytest.fixture
async def backend(etcd_server: EtcdServer) -> AsyncIterator[EtcdSubnetManager]:
    manager = EtcdSubnetManager(EtcdClientConfig(endpoints=(etcd_server.endpoint,)))
    async with manager:
        await manager.set_config(json.dumps(CONFIG))
        yield manager


async def _serve(manager: EtcdSubnetManager, **kw: object) -> tuple[RemoteServer, int]:
    server = RemoteServer({"_": manager}, poll_timeout=2.0)
    port = await server.start("127.0.0.1", 0, **kw)  # type: ignore[arg-type]
    return server, port


async def test_acquire_renew_watch_through_server(backend: EtcdSubnetManager) -> None:
    server, port = await _serve(backend)
    try:
        one = RemoteSubnetManager(f"127.0.0.1:{port}")
        two = RemoteSubnetManager(f"127.0.0.1:{port}")
        config = await one.get_network_config()
        assert str(config.network) == "10.5.0.0/16" and config.backend_type == "host-gw"
        lease1 = await one.acquire_lease(
            config, LeaseAttrs(public_ip=IPv4Address("198.18.0.11"), backend_type="host-gw")
        )
        watch = one.watch_leases(lease1).__aiter__()
        first = await asyncio.wait_for(watch.__anext__(), 10)
        assert list(first) == []  # only our own lease exists: excluded

        lease2 = await two.acquire_lease(
            config, LeaseAttrs(public_ip=IPv4Address("198.18.0.12"), backend_type="host-gw")
        )
        assert lease2.subnet != lease1.subnet
        batch = await asyncio.wait_for(watch.__anext__(), 10)
        assert [(e.type, e.lease.subnet) for e in batch] == [(EventType.ADDED, lease2.subnet)]
        assert str(batch[0].lease.attrs.public_ip) == "198.18.0.12"

        renewed = await two.renew_lease(lease2)
        assert renewed.subnet == lease2.subnet
        # the same lease from the same host: reuse, not a new subnet
        again = await two.acquire_lease(
            config, LeaseAttrs(public_ip=IPv4Address("198.18.0.12"), backend_type="host-gw")
        )
        assert again.subnet == lease2.subnet

        leases = await one.list_leases()
        assert {lease.subnet for lease in leases} == {lease1.subnet, lease2.subnet}

        # deleted behind the server's back: the watcher sees Removed with the last attrs,
        # the owner's wait_lease_lost returns and renew refuses
        lost = asyncio.create_task(two.wait_lease_lost(renewed))
        await asyncio.sleep(0.3)
        await backend.registry.delete(renewed, only_if_unchanged=False)
        removed = await asyncio.wait_for(watch.__anext__(), 10)
        assert [(e.type, e.lease.subnet) for e in removed] == [(EventType.REMOVED, lease2.subnet)]
        assert str(removed[0].lease.attrs.public_ip) == "198.18.0.12"
        await asyncio.wait_for(lost, 10)
        with pytest.raises(LeaseLost):
            await two.renew_lease(renewed)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await server.close()


async def test_reservations_through_server(backend: EtcdSubnetManager) -> None:
    server, port = await _serve(backend)
    try:
        client = RemoteSubnetManager(f"127.0.0.1:{port}")
        await client.reserve(IPv4Network("10.5.7.0/24"), IPv4Address("198.18.0.50"))
        status, body = await request("GET", f"http://127.0.0.1:{port}/v1/_/reservations")
        assert status == 200
        assert json.loads(body) == [{"Subnet": "10.5.7.0/24", "PublicIP": "198.18.0.50"}]
        await client.unreserve(IPv4Network("10.5.7.0/24"))
        status, body = await request("GET", f"http://127.0.0.1:{port}/v1/_/reservations")
        assert json.loads(body) == []
    finally:
        await server.close()


async def test_bad_requests_get_clear_errors(backend: EtcdSubnetManager) -> None:
    server, port = await _serve(backend)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        status, body = await request("POST", f"{base}/_/leases", b"{not json")
        assert status == 400 and b"not JSON" in body
        status, body = await request("GET", f"{base}/nope/config")
        assert status == 404 and b"unknown network" in body
        status, body = await request("GET", f"{base}/_/leases/10.5.1.0-99")
        assert status == 400 and b"bad subnet key" in body
        status, body = await request("GET", f"{base}/")
        assert status == 200 and json.loads(body)["snapshot"] == ["_"]
    finally:
        await server.close()


async def test_client_reports_unreachable_server() -> None:
    client = RemoteSubnetManager("127.0.0.1:9")
    with pytest.raises(SubnetManagerError, match="unreachable"):
        await client.get_network_config()


def _make_certs(d: Path) -> None:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    for name in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext")  # fmt: skip


async def test_tls_requires_client_certificate(backend: EtcdSubnetManager, tmp_path: Path) -> None:
    _make_certs(tmp_path)
    context = server_ssl_context(
        str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem")
    )
    server, port = await _serve(backend, ssl_context=context)
    try:
        good = RemoteSubnetManager(
            f"127.0.0.1:{port}",
            cafile=str(tmp_path / "ca.pem"),
            certfile=str(tmp_path / "client.pem"),
            keyfile=str(tmp_path / "client.key"),
        )
        config = await good.get_network_config()
        assert str(config.network) == "10.5.0.0/16"
        no_cert = RemoteSubnetManager(f"127.0.0.1:{port}", cafile=str(tmp_path / "ca.pem"))
        with pytest.raises(SubnetManagerError, match="unreachable"):
            await no_cert.get_network_config()
    finally:
        await server.close()
