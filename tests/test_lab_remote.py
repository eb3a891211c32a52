"""Client/server mode through the lab: a ``flannel run --listen`` server in the hub (the
only process talking to etcd, TLS with client certificates) and hosts running
``flannel run --remote`` with the host-gw backend."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flannel.lab import Lab
from flannel.lab.topology import HUB_ADDR

pytestmark = [pytest.mark.netns, pytest.mark.lab]

LabFactory = Callable[..., Lab]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"),
             "-subj", f"/CN={name}")  # fmt: skip


def _cert(d: Path, name: str, ca: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
             "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}")  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{san}\n" if san else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.pem"),
             "-CAkey", str(d / f"{ca}.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(ext), "-out", str(d / f"{name}.pem"))  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _cert(d, "server", "ca", san=HUB_ADDR)
    _cert(d, "client", "ca")
    _cert(d, "rogue", "rogue-ca")
    return d


def _tls(d: Path, role: str, ca: str = "ca") -> list[str]:
    return [f"--remote-certfile={d / role}.pem", f"--remote-keyfile={d / role}.key",
            f"--remote-cafile={d / ca}.pem"]  # fmt: skip


@pytest.fixture(scope="module")
def lab(module_lab_factory: LabFactory, certs: Path) -> Iterator[Lab]:
    lab = module_lab_factory(
        hosts=3,
        backend="host-gw",
        server=True,
        server_args=_tls(certs, "server"),
        daemon_args=_tls(certs, "client"),
    )
    lab.wait_ready(timeout=60)
    yield lab


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_clients_through_the_server_reach_every_pod(lab: Lab) -> None:
    for name in lab.hosts:
        argv = lab.host(name).state.daemon
        assert argv is not None and "--remote" in argv.argv and "--etcd-endpoints" not in argv.argv
    assert "serving the subnet manager API" in lab.server_logs()
    matrix = lab.ping_matrix()
    assert all(matrix.values()), [pair for pair, ok in matrix.items() if not ok]


def test_server_restart_keeps_subnets_and_watches_resume(lab: Lab) -> None:
    before = {name: lab.host(name).subnet for name in lab.hosts}
    lab.stop_server()
    # the clients keep their routes while the server is away
    assert all(lab.ping_matrix().values())
    lab.start_server()
    # a host joining after the restart is seen by every old client: their watches resumed
    new = lab.add_host()
    lab.wait_ready(timeout=60)
    assert {name: lab.host(name).subnet for name in before} == before
    matrix = lab.ping_matrix()
    assert all(matrix.values()), [pair for pair, ok in matrix.items() if not ok]
    assert lab.host(new).subnet not in before.values()


@pytest.mark.parametrize("who", ["no-certificate", "rogue-ca"])
def test_client_without_a_valid_certificate_is_refused(lab: Lab, certs: Path, who: str) -> None:
    if who == "no-certificate":
        args = ["--remote-certfile=", "--remote-keyfile="]
    else:
        args = _tls(certs, "rogue", ca="ca")
    name = lab.add_host(args=args)
    try:
        assert _eventually(lambda: "unreachable" in lab.logs(name)), lab.logs(name)[-2000:]
        assert lab.host(name).daemon_running()  # it keeps retrying, no crash
        assert lab.host(name).subnet_env() is None
        leases = lab.etcdctl("get", "--prefix", "--keys-only", f"{lab.state.etcd_prefix}/subnets")
        held = {lab.host(n).subnet for n in lab.hosts if n != name}
        assert len([k for k in leases.split() if k]) == len(held)
    finally:
        lab.remove_host(name)
