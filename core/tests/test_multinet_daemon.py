"""``flannel run`` in multi-network and server mode, end to end with the alloc backend,
real etcd, in a namespace: env files per network, READY=1 once every initial network is
up, exit 1 when no network can be joined, and a --listen server that sends READY=1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

PREFIX = "/coreos.com/network"
Popen = subprocess.Popen[str]


@pytest.fixture
def site(netns_factory: Callable[[str], Netns], tmp_path: Path) -> Iterator[tuple[Netns, str]]:
    ns = netns_factory("mnrun")
    ns.sh(
        "ip link add veth0 type veth peer name veth1 && ip addr add 198.18.0.1/24 dev veth0 && "
        "ip link set veth0 up && ip link set veth1 up"
    )
    (tmp_path / "etcd").mkdir()
    etcd = EtcdServer(netns=ns.name, data_dir=tmp_path / "etcd")
    etcd.start()
    try:
        yield ns, etcd.endpoint
    finally:
        etcd.close()


def _put(ns: Netns, endpoint: str, key: str, value: str) -> None:
    ns.run(["etcdctl", f"--endpoints={endpoint}", "put", key, value])


def _daemon(ns: Netns, notify: Path | None, *flags: str) -> Popen:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "flannel", "run", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)  # safety net only
    return sock


def _stop(proc: Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_ready_once_every_network_is_up(site: tuple[Netns, str], tmp_path: Path) -> None:
    ns, endpoint = site
    for name, cidr in (("a", "10.244.0.0/16"), ("b", "10.245.0.0/16"), ("c", "10.246.0.0/16")):
        _put(ns, endpoint, f"{PREFIX}/{name}/config",
             f'{{"Network":"{cidr}","Backend":{{"Type":"alloc"}}}}')  # fmt: skip
    notify = _notify_socket(tmp_path / "notify.sock")
    subnet_dir = tmp_path / "networks"
    proc = _daemon(ns, tmp_path / "notify.sock", f"--etcd-endpoints={endpoint}",
                   "--networks=a,b", f"--subnet-dir={subnet_dir}", "--iface=veth0")  # fmt: skip
    try:
        assert notify.recv(4096).decode() == "READY=1"
        # READY came after both allowed networks wrote their env files; c is not allowed
        a, b = (subnet_dir / "a.env").read_text(), (subnet_dir / "b.env").read_text()
        assert "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244." in a
        assert "FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET=10.245." in b
        assert sorted(p.name for p in subnet_dir.iterdir()) == ["a.env", "b.env"]
        rc, err = _stop(proc)
        assert rc == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_no_network_to_join_exits_1(site: tuple[Netns, str], tmp_path: Path) -> None:
    ns, endpoint = site
    proc = _daemon(ns, None, f"--etcd-endpoints={endpoint}", "--networks=nope",
                   f"--subnet-dir={tmp_path}", "--iface=veth0")  # fmt: skip
    rc, err = _stop_when_done(proc)
    assert rc == 1
    assert err.strip().splitlines()[-1].startswith("flannel run: error: no network to join")


def _stop_when_done(proc: Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_listen_server_sends_ready_and_serves(site: tuple[Netns, str], tmp_path: Path) -> None:
    ns, endpoint = site
    _put(ns, endpoint, f"{PREFIX}/config", '{"Network":"10.244.0.0/16"}')
    notify = _notify_socket(tmp_path / "notify.sock")
    proc = _daemon(ns, tmp_path / "notify.sock", f"--etcd-endpoints={endpoint}",
                   "--listen=127.0.0.1:18080")  # fmt: skip
    try:
        assert notify.recv(4096).decode() == "READY=1"
        fetch = "import urllib.request as u;print(u.urlopen('http://127.0.0.1:18080/v1/_/config')"
        got = ns.run([sys.executable, "-c", fetch + ".read().decode())"])
        assert '"Network":"10.244.0.0/16"' in got.stdout
        rc, err = _stop(proc)
        assert rc == 0, err
        assert "interface" not in err  # no interface lookup in server mode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
