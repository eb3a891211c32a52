"""etcd client settings, TLS (client certs and CA only) and username/password, for real."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from flannel.etcd import (
    EtcdAuthError,
    EtcdClientConfig,
    EtcdConfigError,
    EtcdConnection,
    EtcdUnavailable,
)
from flannel.etcd_manager import EtcdSubnetManager
from flannel.events import EventType
from flannel.lease import LeaseAttrs
from flannel.testing.etcd import EtcdServer

pytestmark = pytest.mark.timeout(60)

CONFIG = b'{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}'
PASSWORD = "s3cret-Pa55"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(pki: Path, name: str, usage: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=pki,
    )  # fmt: skip
    (pki / f"{name}.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=pki,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=flannel-test-ca",
        cwd=d,
    )  # fmt: skip
    _issue(d, "server", "serverAuth,clientAuth")
    _issue(d, "client", "clientAuth")
    return d


async def _wait_serving(server: EtcdServer, pki: Path) -> None:
    """EtcdServer only waits for the TCP port with https; etcd serves TLS a moment later."""
    cfg = EtcdClientConfig(
        endpoints=(server.endpoint,),
        ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "client.crt"),
        key_file=str(pki / "client.key"),
        dial_timeout=1,
    )
    for _ in range(100):
        conn = EtcdConnection(cfg)
        try:
            await conn.client()
            return
        except EtcdUnavailable:
            await asyncio.sleep(0.1)
        finally:
            await conn.close()
    raise AssertionError(f"TLS etcd at {server.endpoint} never served")


async def _tls_server(pki: Path, client_auth: bool) -> AsyncIterator[EtcdServer]:
    args = [
        f"--cert-file={pki / 'server.crt'}",
        f"--key-file={pki / 'server.key'}",
    ]
    if client_auth:
        args += ["--client-cert-auth", f"--trusted-ca-file={pki / 'ca.crt'}"]
    server = EtcdServer(scheme="https", extra_args=args)
    with server.running():
        await _wait_serving(server, pki)
        yield server


@pytest.fixture
async def mtls_etcd(pki: Path) -> AsyncIterator[EtcdServer]:
    async for server in _tls_server(pki, client_auth=True):
        yield server


@pytest.fixture
async def tls_etcd(pki: Path) -> AsyncIterator[EtcdServer]:
    async for server in _tls_server(pki, client_auth=False):
        yield server


async def _roundtrip(mgr: EtcdSubnetManager) -> None:
    """Config, acquire and a watch event, all over the configured transport."""
    await mgr.set_config(CONFIG)
    cfg = await mgr.get_network_config()
    batches = mgr.watch_leases(None)
    assert list(await anext(batches)) == []
    lease = await mgr.acquire_lease(cfg, LeaseAttrs(public_ip=IPv4Address("198.18.0.1")))
    batch = await asyncio.wait_for(anext(batches), 10)
    assert [(ev.type, ev.lease.key) for ev in batch] == [(EventType.ADDED, lease.key)]
    await batches.aclose()  # type: ignore[attr-defined]


async def test_client_cert_tls(mtls_etcd: EtcdServer, pki: Path) -> None:
    cfg = EtcdClientConfig(
        endpoints=(mtls_etcd.endpoint,),
        ca_file=str(pki / "ca.crt"),
        cert_file=str(pki / "client.crt"),
        key_file=str(pki / "client.key"),
    )
    async with EtcdSubnetManager(cfg, resync_interval=60) as mgr:
        await _roundtrip(mgr)


async def test_client_cert_required_but_missing_is_a_clear_error(
    mtls_etcd: EtcdServer, pki: Path
) -> None:
    cfg = EtcdClientConfig(
        endpoints=(mtls_etcd.endpoint,), ca_file=str(pki / "ca.crt"), dial_timeout=2
    )
    mgr = EtcdSubnetManager(cfg)
    with pytest.raises(EtcdUnavailable) as info:
        await mgr.connect()
    assert mtls_etcd.endpoint in str(info.value) and "\n" not in str(info.value)
    await mgr.close()


async def test_ca_only_tls_and_bare_endpoint(tls_etcd: EtcdServer, pki: Path) -> None:
    """flanneld ignores a CA without client cert; we use it (https and bare host:port)."""
    bare = f"{tls_etcd.host}:{tls_etcd.port}"
    cfg = EtcdClientConfig(endpoints=(bare,), ca_file=str(pki / "ca.crt"))
    async with EtcdSubnetManager(cfg, resync_interval=60) as mgr:
        await _roundtrip(mgr)
    https = EtcdClientConfig(endpoints=(tls_etcd.endpoint,), ca_file=str(pki / "ca.crt"))
    async with EtcdSubnetManager(https) as mgr:
        assert await mgr.get_config_raw() == CONFIG
    # Without our CA the server's certificate is not trusted: refused, not silently plain.
    untrusted = EtcdSubnetManager(EtcdClientConfig(endpoints=(tls_etcd.endpoint,), dial_timeout=2))
    with pytest.raises(EtcdUnavailable):
        await untrusted.connect()
    await untrusted.close()


def _etcdctl(server: EtcdServer, *args: str) -> None:
    subprocess.run(
        ["etcdctl", f"--endpoints={server.endpoint}", *args],
        check=True,
        capture_output=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )


@pytest.fixture
def auth_etcd() -> Iterator[EtcdServer]:
    # Tokens expire after 2 s idle, so the tests also cover re-authentication.
    server = EtcdServer(extra_args=["--auth-token-ttl=2"])
    with server.running():
        _etcdctl(server, "user", "add", f"root:{PASSWORD}", "--interactive=false")
        _etcdctl(server, "auth", "enable")
        yield server


@pytest.mark.timeout(90)
async def test_username_password(auth_etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = EtcdClientConfig(endpoints=(auth_etcd.endpoint,), username="root", password=PASSWORD)
    assert PASSWORD not in repr(cfg) and PASSWORD not in cfg.describe()
    async with EtcdSubnetManager(cfg, resync_interval=60) as mgr:
        await _roundtrip(mgr)
        await asyncio.sleep(3.5)  # the token expired: requests re-authenticate transparently
        assert (await mgr.get_config_raw()) == CONFIG
        batches = mgr.watch_leases(None)
        assert len(list(await anext(batches))) == 1
        await batches.aclose()  # type: ignore[attr-defined]
    bad = EtcdSubnetManager(
        EtcdClientConfig(endpoints=(auth_etcd.endpoint,), username="root", password="wrong")
    )
    with pytest.raises(EtcdAuthError, match="rejected user 'root'"):
        await bad.connect()
    await bad.close()
    anonymous = EtcdSubnetManager(EtcdClientConfig(endpoints=(auth_etcd.endpoint,)))
    with pytest.raises(EtcdAuthError, match="--etcd-username"):
        await anonymous.get_config_raw()
    await anonymous.close()
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoints": ("ftp://x:1",)}, "scheme 'ftp'"),
        ({"endpoints": ("http://127.0.0.1:notaport",)}, "bad port"),
        ({"endpoints": ("a b:2379",)}, "is not HOST:PORT"),
        ({"cert_file": "/c.pem"}, "--etcd-certfile given without --etcd-keyfile"),
        ({"key_file": "/k.pem"}, "--etcd-keyfile given without --etcd-certfile"),
        ({"username": "root"}, "needs both --etcd-username and --etcd-password"),
    ],
)
def test_bad_client_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(EtcdConfigError, match=message.replace("(", r"\(")):
        EtcdClientConfig(**kwargs)  # type: ignore[arg-type]


def test_from_flags_splits_the_comma_list() -> None:
    with pytest.raises(EtcdConfigError, match="empty etcd endpoint"):
        EtcdClientConfig.from_flags("http://a:1,,http://b:2")
    cfg = EtcdClientConfig.from_flags("http://10.0.0.1:2379, https://h:2379 ,h2")
    assert [(e.scheme, e.host, e.port) for e in cfg.parsed_endpoints] == [
        ("http", "10.0.0.1", 2379),
        ("https", "h", 2379),
        ("", "h2", 2379),
    ]


async def test_unreadable_ca_file_names_the_flag(tmp_path: Path) -> None:
    cfg = EtcdClientConfig(endpoints=("https://127.0.0.1:1",), ca_file=str(tmp_path / "nope.pem"))
    mgr = EtcdSubnetManager(cfg)
    with pytest.raises(EtcdConfigError, match="cannot read --etcd-cafile"):
        await mgr.connect()
    await mgr.close()
