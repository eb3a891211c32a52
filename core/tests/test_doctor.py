"""``flannel doctor`` run as a command inside a namespace, against a real etcd there."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flannel.config import NetworkConfig
from flannel.doctor import FAIL, OK, WARN, Check, check_kernel, exit_code, module_available
from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns

pytestmark = pytest.mark.timeout(120)


def doctor(ns: Netns, *args: str) -> tuple[int, dict[str, Any]]:
    done = ns.run([sys.executable, "-m", "flannel.doctor_cli", "--json", "--timeout", "1", *args],
                  check=False)  # fmt: skip
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture
def host(netns_factory: Callable[[str], Netns]) -> Netns:
    """A namespace with an underlay (198.18.0.1/24 on a veth, default route) and forwarding."""
    ns = netns_factory("doc")
    peer = netns_factory("docpeer")
    ns.sh(f"ip link add eth0 type veth peer name eth0 netns {peer.name}")
    ns.sh("ip addr add 198.18.0.1/24 dev eth0 && ip link set eth0 up mtu 1500")
    ns.sh("ip route add default via 198.18.0.254")
    ns.sh("sysctl -qw net.ipv4.ip_forward=1")
    return ns


@pytest.fixture
def etcd_in(host: Netns) -> Iterator[EtcdServer]:
    server = EtcdServer(netns=host.name)
    with server.running():
        yield server


def put(ns: Netns, key: str, value: str) -> None:
    ns.run(["etcdctl", "--endpoints=127.0.0.1:2379", "put", key, value])


@pytest.mark.netns
def test_missing_etcd_fails(host: Netns) -> None:
    rc, report = doctor(host, "--etcd-endpoints", "http://127.0.0.1:2379")
    checks = by_name(report)
    assert rc == 1 and report["ok"] is False
    assert checks["etcd"]["status"] == FAIL
    assert "no etcd endpoint answers" in checks["etcd"]["detail"]
    assert checks["config"]["status"] == FAIL


@pytest.mark.netns
def test_bad_config_fails_and_good_config_passes(host: Netns, etcd_in: EtcdServer) -> None:
    put(host, "/coreos.com/network/config", '{"Network":"10.3.0.0/16","SubnetLen":31}')
    rc, report = doctor(host, "--etcd-endpoints", "http://127.0.0.1:2379")
    checks = by_name(report)
    assert rc == 1
    assert checks["etcd"]["status"] == OK
    assert checks["config"]["status"] == FAIL and "SubnetLen" in checks["config"]["detail"]

    put(
        host, "/coreos.com/network/config", '{"Network":"10.3.0.0/16","Backend":{"Type":"host-gw"}}'
    )
    rc, report = doctor(host, "--etcd-endpoints", "http://127.0.0.1:2379")
    checks = by_name(report)
    assert {c: checks[c]["status"] for c in checks} == {
        "etcd": OK, "config": OK, "kernel": OK, "forwarding": OK, "interface": OK,
        "leftovers": OK, "firewall": OK,
    }, report  # fmt: skip
    assert rc == 0
    assert "Network 10.3.0.0/16 SubnetLen 24, backend host-gw" in checks["config"]["detail"]
    assert checks["interface"]["data"] == {
        "name": "eth0", "mtu": 1500, "pod_mtu": 1500, "address": "198.18.0.1",
    }  # fmt: skip


@pytest.mark.netns
def test_missing_config_and_other_prefix(host: Netns, etcd_in: EtcdServer) -> None:
    rc, report = doctor(host, "--etcd-endpoints", "http://127.0.0.1:2379",
                        "--etcd-prefix", "/other/network")  # fmt: skip
    assert rc == 1
    assert "no network config at etcd /other/network/config" in by_name(report)["config"]["detail"]


@pytest.mark.netns
def test_leftovers_and_vxlan_mtu_from_a_local_file(host: Netns, tmp_path: Path) -> None:
    host.sh("ip link add flannel.1 type vxlan id 1 dstport 8472 dev eth0")
    host.sh("ip link set flannel.1 up && ip route add 10.5.2.0/24 dev flannel.1")
    host.sh("iptables -t nat -N FLANNEL-POSTRTG")
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    rc, report = doctor(host, "--net-config", str(conf))
    checks = by_name(report)
    assert checks["etcd"]["status"] == OK and "not used" in checks["etcd"]["detail"]
    assert checks["leftovers"]["status"] == WARN
    assert checks["leftovers"]["data"]["devices"] == ["flannel.1"]
    assert checks["leftovers"]["data"]["routes"] == ["10.5.2.0/24"]
    assert checks["leftovers"]["data"]["firewall"] == ["iptables chain FLANNEL-POSTRTG"]
    assert checks["interface"]["data"]["pod_mtu"] == 1450
    # warnings alone do not fail; the vxlan module decides the kernel verdict on this host
    assert rc == exit_code([Check(n, c["status"], "") for n, c in checks.items()])


@pytest.mark.netns
def test_bad_net_config_file(host: Netns, tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network": "banana"}')
    rc, report = doctor(host, "--net-config", str(conf))
    assert rc == 1
    assert by_name(report)["config"]["status"] == FAIL
    rc, report = doctor(host, "--net-config", str(tmp_path / "absent.json"))
    assert rc == 1 and "cannot read --net-config" in by_name(report)["config"]["detail"]


@pytest.mark.netns
def test_table_output_without_json(host: Netns) -> None:
    done = host.run([sys.executable, "-m", "flannel.doctor_cli", "--timeout", "1",
                     "--etcd-endpoints", "http://127.0.0.1:2379"], check=False)  # fmt: skip
    assert done.returncode == 1
    assert "flannel doctor" in done.stdout and "problems found: etcd, config" in done.stdout


def test_kernel_checks_follow_the_backend(tmp_path: Path) -> None:
    def cfg(kind: str) -> NetworkConfig:
        return NetworkConfig(network=None, subnet_len=24, subnet_min=None, subnet_max=None,
                             backend_type=kind)  # fmt: skip

    assert check_kernel(cfg("host-gw")).status == OK
    assert "/dev/net/tun" in check_kernel(cfg("udp")).detail
    (tmp_path / "sys/module/vxlan").mkdir(parents=True)
    assert module_available("vxlan", tmp_path) == "loaded"
    assert module_available("surely_not_a_module", tmp_path) is None
