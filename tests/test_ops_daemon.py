"""The operator's view of a real daemon: ``flannel run`` in a namespace with etcd beside it.

- /readyz is 200 once the network is up, 503 while etcd is stopped, 200 again after;
  /metrics moves; the masquerade rules exist while the daemon runs and are gone after SIGTERM.
- With ``--etcd-password`` (right or wrong) and ``-v 10``, no log line contains it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

PASSWORD = "Pw-7f3c9a-secret"
CONFIG = '{"Network": "10.244.0.0/16", "Backend": {"Type": "alloc"}}'

HTTP_GET = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status); print(r.read().decode(), end="")
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode(), end="")
except OSError as e:
    print(0); print(e)
"""


def eventually(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll until true or a generous deadline passes (no timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


class Node:
    """One namespace: underlay veth (198.18.0.1/24, default route), etcd, a daemon."""

    def __init__(self, make: Callable[[str], Netns], tmp: Path) -> None:
        self.ns = make("node")
        peer = make("peer")
        self.ns.sh(f"ip link add eth0 type veth peer name eth0 netns {peer.name}")
        self.ns.sh("ip addr add 198.18.0.1/24 dev eth0 && ip link set eth0 up")
        self.ns.sh("ip route add default via 198.18.0.254")
        self.tmp = tmp
        self.etcd = EtcdServer(netns=self.ns.name, data_dir=tmp / "etcd")
        (tmp / "etcd").mkdir()
        self.etcd.start()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"

    def etcdctl(self, *args: str) -> str:
        return self.ns.run(["etcdctl", "--endpoints=127.0.0.1:2379", *args]).stdout

    def start(
        self, *flags: str, env: tuple[str, ...] = (), subnet_file: str = "subnet.env"
    ) -> None:
        """Start ``flannel run`` with ``flags`` (``env``: extra ``NAME=value`` variables)."""
        argv = ["ip", "netns", "exec", self.ns.name, "env", *env, sys.executable, "-m",
                "flannel", "run", "--etcd-endpoints", "http://127.0.0.1:2379", "--iface", "eth0",
                "--subnet-file", str(self.tmp / subnet_file), *flags]  # fmt: skip
        with open(self.log, "ab") as out:
            self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT)  # fmt: skip

    def stop(self) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return self.daemon.wait(30)
        finally:
            if self.daemon.poll() is None:
                self.daemon.kill()
                self.daemon.wait()

    def get(self, path: str) -> tuple[int, str]:
        out = self.ns.run([sys.executable, "-c", HTTP_GET, f"http://127.0.0.1:8471{path}"])
        status, _, body = out.stdout.partition("\n")
        return int(status), body

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        self.etcd.close()


@pytest.fixture
def node(netns_factory: Callable[[str], Netns], tmp_path: Path) -> Iterator[Node]:
    n = Node(netns_factory, tmp_path)
    try:
        yield n
    finally:
        n.close()


def test_readyz_follows_etcd_and_rules_follow_the_daemon(node: Node) -> None:
    node.etcdctl("put", "/coreos.com/network/config", CONFIG)
    node.start("--ip-masq", "--healthz-ip", "127.0.0.1", "--healthz-port", "8471",
               "--iptables-resync", "1")  # fmt: skip
    assert eventually(lambda: node.get("/readyz")[0] == 200), node.log.read_text()[-3000:]
    assert node.get("/healthz") == (200, "flanneld is running\n")

    env = dict(line.split("=", 1) for line in (node.tmp / "subnet.env").read_text().split())
    subnet = env["FLANNEL_SUBNET"].replace(".1/", ".0/")
    rules = node.ns.run(["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]).stdout
    assert f'! -s 10.244.0.0/16 -d {subnet} -m comment --comment "flanneld masq" -j RETURN' in rules
    assert "FLANNEL-FWD" in node.ns.run(["iptables", "-S", "FORWARD"]).stdout

    metrics = node.get("/metrics")[1]
    assert "flannel_ready 1" in metrics and "flannel_masq_rules_in_place 1" in metrics

    # A rule deleted by hand comes back within the resync period.
    node.ns.run(["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"])
    assert eventually(lambda: node.ns.run(["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
                      .stdout == rules)  # fmt: skip
    assert eventually(lambda: "flannel_masq_repairs_total 1" in node.get("/metrics")[1])

    node.etcd.stop()
    assert eventually(lambda: node.get("/readyz")[0] == 503)
    status, body = node.get("/readyz")
    assert status == 503 and "etcd" in body, body
    assert node.get("/healthz")[0] == 200  # alive, just not ready
    node.etcd.start()
    assert eventually(lambda: node.get("/readyz")[0] == 200), node.get("/readyz")

    assert node.stop() == 0
    assert "FLANNEL" not in node.ns.run(["iptables", "-t", "nat", "-S"]).stdout
    assert "FLANNEL" not in node.ns.run(["iptables", "-S"]).stdout


def test_no_log_line_contains_the_etcd_password(node: Node) -> None:
    node.etcdctl("put", "/coreos.com/network/config", CONFIG)
    node.etcdctl("user", "add", f"root:{PASSWORD}")
    node.etcdctl("auth", "enable")
    node.start("--etcd-username", "root", "--etcd-password", PASSWORD, "-v", "10",
               "--log-format", "json")  # fmt: skip
    assert eventually(lambda: (node.tmp / "subnet.env").exists()), node.log.read_text()[-3000:]
    assert node.stop() == 0
    # A wrong password, given through the environment: the auth errors are logged, it is not.
    wrong = PASSWORD[::-1]
    before = len(node.log.read_text())
    node.start("--etcd-username", "root", "-v", "10", env=(f"FLANNELD_ETCD_PASSWORD={wrong}",),
               subnet_file="subnet2.env")  # fmt: skip

    def auth_failed() -> bool:
        return "authentication failed" in node.log.read_text()[before:]

    assert eventually(auth_failed), node.log.read_text()[before:][-3000:]
    node.stop()
    text = node.log.read_text()
    lines = text.splitlines()
    assert len(lines) > 20  # -v 10 really logged
    assert sum(1 for line in lines if line.startswith("{")) > 10
    assert json.loads(next(line for line in lines if line.startswith("{")))["level"]
    assert PASSWORD not in text
    assert wrong not in text
