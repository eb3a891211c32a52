"""udp backend through the lab: real etcd, real `flannel run` daemons, TUN + UDP data path."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from flannel.lab import Lab
from flannel_udp import packet
from flannel_udp.datapath import DATAPATH_ENV, OFFLOAD_ENV, fastpath_available
from flannel_udp.testing import in_netns

pytestmark = [pytest.mark.netns, pytest.mark.lab]

LabFactory = Callable[..., Lab]
UDP = {"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}
PORT = 8285
METRICS_PORT = 19101
IP_TTL, IP_RECVTTL = 2, 12  # linux/in.h


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``check`` until true or a generous deadline passes (no timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def all_pairs_ping(lab: Lab) -> bool:
    return all(lab.ping_matrix().values())


@pytest.fixture(scope="module")
def lab3(module_lab_factory: LabFactory) -> Lab:
    lab = module_lab_factory(
        hosts=3, backend="udp", config=UDP,
        daemon_args=["--healthz-ip", "127.0.0.1", "--healthz-port", str(METRICS_PORT)],
    )  # fmt: skip
    lab.wait_ready(timeout=90, routes=False)  # one route covers the Network: nothing to count
    # Peers arrive through the etcd watch after subnet.env: wait until every pair answers.
    assert eventually(lambda: all_pairs_ping(lab), timeout=60), lab.ping_matrix()
    return lab


def test_three_hosts_full_ping_matrix_over_flannel0(lab3: Lab) -> None:
    matrix = lab3.ping_matrix()
    assert len(matrix) == 6
    assert all(matrix.values()), [pair for pair, ok in matrix.items() if not ok]
    h1 = lab3.host("h1")
    env = h1.subnet_env()
    assert env is not None and env["FLANNEL_MTU"] == "1472"  # 1500 - 28
    link = json.loads(h1.sh("ip -j -d link show flannel0"))[0]
    assert link["mtu"] == 1472 and link["linkinfo"]["info_kind"] == "tun"
    addrs = json.loads(h1.sh("ip -j -4 addr show flannel0"))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [(h1.subnet.split("/")[0], 32)]  # type: ignore[union-attr]
    routes = [r for r in h1.routes() if r.get("dev") == "flannel0"]
    assert [r["dst"] for r in routes] == ["10.244.0.0/16"]
    assert f"{h1.address}:{PORT}" in h1.sh("ss -uln")
    if fastpath_available() and not {DATAPATH_ENV, OFFLOAD_ENV} & set(os.environ):
        assert "c data path with TSO" in lab3.logs("h1")  # the daemon runs the fast path
    # udp leases carry no BackendType, exactly as flanneld writes them
    raw = lab3.etcdctl("get", "--prefix", "/coreos.com/network/subnets/", "--print-value-only")
    values = [line for line in raw.splitlines() if line.strip()]
    assert len(values) >= 3
    assert all(
        re.fullmatch(r'\{"PublicIP":"198\.18\.0\.\d+","PublicIPv6":null\}', v) for v in values
    ), values


def _ping_seqs(output: str) -> tuple[int, set[int]]:
    sent = int(re.search(r"(\d+) packets transmitted", output).group(1))  # type: ignore[union-attr]
    got = {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl=", output)}
    return sent, got


def test_join_and_leave_do_not_disturb_a_pinging_pair(lab3: Lab) -> None:
    h1, h2 = lab3.host("h1"), lab3.host("h2")
    ping = subprocess.Popen(
        ["ip", "netns", "exec", h1.pod_netns, "ping", "-i", "0.1", "-W", "2", str(h2.pod_ip)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)
        new = lab3.add_host()
        lab3.wait_ready(timeout=90, routes=False)
        assert eventually(lambda: lab3.ping(new, "h1") and lab3.ping("h2", new), timeout=60)
        lab3.remove_host("h3", delete_lease=True)
        assert eventually(lambda: lab3.ping("h1", new) and lab3.ping(new, "h2"), timeout=30)
        time.sleep(1)
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=30)
    sent, got = _ping_seqs(out)
    assert sent >= 20, out
    # Every request but possibly the one in flight when ping was interrupted got its reply.
    missing = set(range(1, sent)) - got
    assert not missing, f"lost icmp_seq {sorted(missing)}\n{out}"


def _inner_udp(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    )  # fmt: skip
    header[10:12] = packet.checksum(header).to_bytes(2, "big")
    return bytes(header) + udp


def _send_from(netns: str, src: str, dst: str, data: bytes) -> None:
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((src, 0))
        sock.sendto(data, (dst, PORT))


def _receive(sock: socket.socket, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


def _metric(lab: Lab, host: str, name: str) -> float:
    """A sample from the daemon's /metrics (0.0 when the series does not exist yet)."""
    fetch = (
        "import urllib.request;"
        f"print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5)"
        ".read().decode())"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", lab.host(host).netns, sys.executable, "-c", fetch],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, f"/metrics on {host} did not answer: {done.stderr[-500:]}"
    for line in done.stdout.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_datagram_from_a_non_peer_is_dropped_and_counted(lab3: Lab) -> None:
    h1 = lab3.host("h1")
    sender = next(n for n in lab3.hosts if n != "h1")
    pod_ip, peer_pod = str(h1.pod_ip), str(lab3.host(sender).pod_ip)
    inner = _inner_udp(peer_pod, pod_ip, 5555, b"injected")
    drop_metric = 'flannel_udp_drops_total{reason="unknown_source"}'
    before = _metric(lab3, "h1", drop_metric)
    with in_netns(h1.pod_netns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind((pod_ip, 5555))
        # The hub (198.18.0.1, etcd's host) holds no lease: its datagram must not get in.
        _send_from(lab3.state.hub, "198.18.0.1", h1.address, inner)
        assert _receive(listener, 2.0) is None
        assert eventually(lambda: "dropped 1 datagram(s) from addresses that hold no lease "
                          "(last from 198.18.0.1)" in lab3.logs("h1"), timeout=10)  # fmt: skip
        assert eventually(lambda: _metric(lab3, "h1", drop_metric) == before + 1, timeout=10)
        # Control: the same bytes from a peer's public address are delivered.
        _send_from(lab3.host(sender).netns, lab3.host(sender).address, h1.address, inner)
        assert _receive(listener, 5.0) == b"injected"


def test_pod_gets_net_unreachable_for_an_unleased_destination(lab3: Lab) -> None:
    h1 = lab3.host("h1")
    done = subprocess.run(
        ["ip", "netns", "exec", h1.pod_netns, "ping", "-c", "1", "-W", "2", "10.244.250.9"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Destination Net Unreachable" in done.stdout, done.stdout
    assert f"From {h1.subnet.split('/')[0]} " in done.stdout, done.stdout  # type: ignore[union-attr]


def test_bulk_tcp_between_pods_arrives_intact(lab3: Lab) -> None:
    """TSO on the sending host and coalescing on the receiving one keep every byte."""
    src, dst = lab3.hosts[0], lab3.hosts[1]
    pod_ip = str(lab3.host(dst).pod_ip)
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab3.host(dst).pod_netns, sys.executable, "-c",
         "import socket,hashlib\n"
         f"s=socket.create_server(('{pod_ip}',7777));c,_=s.accept();h=hashlib.sha256()\n"
         "while d:=c.recv(1<<20): h.update(d)\nprint(h.hexdigest())"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        data = random.Random(5).randbytes(16 << 20)
        client = (
            "import socket,sys,time\n"
            "for _ in range(50):\n"
            f"    try: c=socket.create_connection(('{pod_ip}',7777)); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "c.sendall(sys.stdin.buffer.read()); c.close()"
        )
        subprocess.run(
            ["ip", "netns", "exec", lab3.host(src).pod_netns, sys.executable, "-c", client],
            input=data, check=True, timeout=120,
        )  # fmt: skip
        out, _ = server.communicate(timeout=120)
    finally:
        server.kill()
        server.wait()
    assert out.strip() == hashlib.sha256(data).hexdigest()
