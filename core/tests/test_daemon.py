"""End to end: ``flannel run``/``flanneld`` with the alloc backend, real etcd, in a netns.

Each test makes a namespace with a veth underlay (198.18.0.1/24 on veth0, default route
through it), runs etcd inside it on 127.0.0.1 and the daemon with ``ip netns exec``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}'
PREFIX = "/coreos.com/network"


@dataclass
class Site:
    ns: Netns
    etcd: EtcdServer
    tmp: Path

    def etcdctl(self, *args: str) -> str:
        done = self.ns.run(["etcdctl", f"--endpoints={self.etcd.endpoint}", *args])
        return done.stdout

    def leases(self) -> dict[str, dict[str, object]]:
        out = self.etcdctl("get", "--prefix", f"{PREFIX}/subnets/")
        lines = out.splitlines()
        return {
            lines[i].rsplit("/", 1)[1]: json.loads(lines[i + 1]) for i in range(0, len(lines), 2)
        }

    def daemon(self, *flags: str, notify: Path | None = None, prog: str = "run") -> Popen:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify)
        argv = [sys.executable, "-m", "flannel", "run"] if prog == "run" else [
            sys.executable, "-c", "from flannel.cli.flanneld import main; raise SystemExit(main())"
        ]  # fmt: skip
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *argv,
             f"--etcd-endpoints={self.etcd.endpoint}", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip


Popen = subprocess.Popen[str]


@pytest.fixture
def site(netns_factory: Callable[[str], Netns], tmp_path: Path) -> Iterator[Site]:
    ns = netns_factory("run")
    ns.sh(
        "ip link add veth0 type veth peer name veth1 && ip addr add 198.18.0.1/24 dev veth0 && "
        "ip link set veth0 up && ip link set veth1 up && "
        "ip route add default via 198.18.0.254 dev veth0"
    )
    (tmp_path / "etcd").mkdir()
    etcd = EtcdServer(netns=ns.name, data_dir=tmp_path / "etcd")
    etcd.start()
    try:
        yield Site(ns, etcd, tmp_path)
    finally:
        etcd.close()


class Notify:
    """A NOTIFY_SOCKET stand-in: a unix datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(60)  # safety net only

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


def stop(proc: Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def wait_for(predicate: Callable[[], bool], proc: Popen) -> None:
    """Poll until true; fail early if the daemon died (the test timeout is the safety net)."""
    while not predicate():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"daemon exited with {proc.returncode}: {err}")
        time.sleep(0.05)


def test_run_alloc_writes_subnet_env_and_stops_on_sigterm(site: Site) -> None:
    env_file = site.tmp / "run" / "subnet.env"
    notify = Notify(site.tmp / "notify.sock")
    # the daemon starts before the config exists: it must wait for it
    proc = site.daemon(f"--subnet-file={env_file}", "--iface", "veth0", notify=notify.path)
    try:
        site.etcdctl("put", f"{PREFIX}/config", CONFIG)
        assert notify.next() == "READY=1"
        text = env_file.read_text()
        leases = site.leases()
        assert len(leases) == 1
        key, value = next(iter(leases.items()))
        assert value == {"PublicIP": "198.18.0.1", "PublicIPv6": None}
        net, length = key.split("-")
        first = net.rsplit(".", 1)[0] + ".1"
        assert text == (
            f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/{length}\n"
            "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        )
        rc, err = stop(proc)
        assert rc == 0, err
        assert notify.next() == "STOPPING=1"
        assert "stopped" in err and "Traceback" not in err
        # nothing is released on exit: the lease stays for the next start
        assert list(site.leases()) == [key]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_restart_keeps_subnet_and_deleted_lease_is_reacquired(site: Site) -> None:
    env_file = site.tmp / "subnet.env"
    site.etcdctl("put", f"{PREFIX}/config", CONFIG)
    proc = site.daemon(f"--subnet-file={env_file}", "-ip-masq")
    try:
        wait_for(env_file.exists, proc)
        first = env_file.read_text()
        assert "FLANNEL_IPMASQ=true\n" in first
        (key,) = site.leases()
        env_file.unlink()
        site.etcdctl("del", f"{PREFIX}/subnets/{key}")
        # revocation: re-acquired in-process (flanneld exits), preferring the same subnet
        wait_for(env_file.exists, proc)
        assert env_file.read_text() == first
        assert list(site.leases()) == [key]
        rc, err = stop(proc)
        assert rc == 0, err
        assert "re-acquiring" in err
        # a restart gets the same subnet back (reuse by public IP)
        env_file.unlink()
        proc = site.daemon(f"--subnet-file={env_file}", "-ip-masq", prog="flanneld")
        wait_for(env_file.exists, proc)
        assert env_file.read_text() == first
        rc, err = stop(proc)
        assert rc == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_malformed_config_exits_1_with_one_line_and_writes_nothing(site: Site) -> None:
    env_file = site.tmp / "subnet.env"
    site.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.244.0.0/16","SubnetLen":40}')
    proc = site.daemon(f"--subnet-file={env_file}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("flannel run: error: invalid network config:") and "SubnetLen" in last
    assert "Traceback" not in err
    assert not env_file.exists()
    assert site.leases() == {}


def test_unknown_backend_exits_1_naming_the_package(site: Site) -> None:
    site.etcdctl("put", f"{PREFIX}/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"nope"}}')
    proc = site.daemon(f"--subnet-file={site.tmp / 'subnet.env'}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "unknown backend type 'nope'" in err and "pip install flannel-nope" in err
    assert site.leases() == {}


def _http_get(site: Site, port: int, path: str) -> tuple[int, str]:
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)\n"
        "    print(r.status, r.read().decode().strip())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode().strip())\n"
        "except OSError as e:\n"
        "    print(0, e)\n"
    )
    out = site.ns.run([sys.executable, "-c", code]).stdout.strip()
    status, _, body = out.partition(" ")
    return int(status), body


def test_ip_masq_rules_and_readyz_follow_the_network(site: Site) -> None:
    env_file = site.tmp / "subnet.env"
    site.etcdctl("put", f"{PREFIX}/config", CONFIG)
    proc = site.daemon(
        f"--subnet-file={env_file}", "--ip-masq", "--healthz-ip=127.0.0.1",
        "--healthz-port=18471", "--masq-backend=iptables",
    )  # fmt: skip
    try:
        wait_for(lambda: _http_get(site, 18471, "/readyz")[0] == 200, proc)
        assert _http_get(site, 18471, "/healthz") == (200, "flanneld is running")
        rules = site.ns.sh("iptables -t nat -S FLANNEL-POSTRTG")
        assert "-s 10.244.0.0/16 -d 10.244.0.0/16" in rules and "MASQUERADE" in rules
        assert "FLANNEL-FWD" in site.ns.sh("iptables -S FORWARD")
        status, metrics = _http_get(site, 18471, "/metrics")
        assert status == 200 and "flannel_lease_acquisitions_total 1" in metrics
        rc, err = stop(proc)
        assert rc == 0, err
        # unlike flanneld, the rules go away with the daemon
        assert "FLANNEL" not in site.ns.sh("iptables -t nat -S; iptables -S")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lease_is_renewed_before_expiry_against_real_etcd(site: Site) -> None:
    """TTL 62 s with a 1 minute margin: a renewal falls due about every 2 s."""
    env_file = site.tmp / "subnet.env"
    site.etcdctl("put", f"{PREFIX}/config", CONFIG)
    proc = site.daemon(
        f"--subnet-file={env_file}", "--lease-ttl=62", "--subnet-lease-renew-margin=1",
        "--healthz-ip=127.0.0.1", "--healthz-port=18472", "--iptables-forward-rules=false",
    )  # fmt: skip

    def renewals() -> int:
        status, body = _http_get(site, 18472, "/metrics")
        for line in body.splitlines() if status == 200 else []:
            if line.startswith('flannel_lease_renewals_total{result="ok"}'):
                return int(float(line.split()[-1]))
        return 0

    try:
        wait_for(lambda: renewals() >= 2, proc)
        (key,) = site.leases()
        lease_id = site.etcdctl("get", f"{PREFIX}/subnets/{key}", "-w", "json")
        ttl = site.etcdctl("lease", "timetolive", f"{json.loads(lease_id)['kvs'][0]['lease']:x}")
        assert "granted with TTL(62s)" in ttl
        rc, err = stop(proc)
        assert rc == 0, err
        assert "renewed lease" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_daemons_see_each_other_as_peers(site: Site) -> None:
    """Peer event batches reach the backend through the lifecycle (logged with -v 1)."""
    site.etcdctl("put", f"{PREFIX}/config", CONFIG)
    procs: list[tuple[Popen, Path, Path]] = []
    try:
        for name, ip in (("a", "198.18.0.1"), ("b", "198.18.0.2")):
            env_file, log_file = site.tmp / f"{name}.env", site.tmp / f"{name}.log"
            with log_file.open("w") as log_out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", site.ns.name, sys.executable, "-m", "flannel", "run",
                     f"--etcd-endpoints={site.etcd.endpoint}", f"--subnet-file={env_file}",
                     f"--public-ip={ip}", "-v", "1", "--iptables-forward-rules=false"],
                    stdout=subprocess.DEVNULL, stderr=log_out, text=True,
                )  # fmt: skip
            procs.append((proc, env_file, log_file))
            wait_for(env_file.exists, proc)
        leases = {v["PublicIP"]: k for k, v in site.leases().items()}
        subnet_a = leases["198.18.0.1"].replace("-", "/")
        subnet_b = leases["198.18.0.2"].replace("-", "/")
        (a, _, log_a), (b, _, log_b) = procs
        # b's first batch lists a; a hears about b when it appears
        wait_for(lambda: f"peer events: +{subnet_a}" in log_b.read_text(), b)
        wait_for(lambda: f"peer events: +{subnet_b}" in log_a.read_text(), a)
        b.send_signal(signal.SIGINT)  # SIGINT stops as cleanly as SIGTERM
        assert b.wait(timeout=30) == 0
        # b's lease stays (nothing is released on exit); deleting it is a Removed for a
        site.etcdctl("del", f"{PREFIX}/subnets/{leases['198.18.0.2']}")
        wait_for(lambda: f"peer events: -{subnet_b}" in log_a.read_text(), a)
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=30) == 0
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
