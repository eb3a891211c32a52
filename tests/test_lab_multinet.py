"""Several networks in one daemon (``--watch-networks``) through the lab: network ``blue``
with vxlan (VNI 7, device ``flannel.7``) and ``red`` with udp (``flannel0``), each with its
own pods, env file, routes and devices.

Both vxlan and host-gw mark their routes with protocol 75 and prune the ones they do not
want; their route tables prune only inside their own network's CIDRs, so a host-gw and a
vxlan network on one host keep each other's routes (the last test; issue 10).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from flannel.lab import Lab

pytestmark = [pytest.mark.netns, pytest.mark.lab]

LabFactory = Callable[..., Lab]
BLUE = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}}
RED = {"Network": "10.246.0.0/16", "Backend": {"Type": "udp"}}


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@pytest.fixture(scope="module")
def lab(module_lab_factory: LabFactory) -> Iterator[Lab]:
    lab = module_lab_factory(
        hosts=3, networks={"blue": BLUE, "red": RED}, daemon_args=["--watch-networks"]
    )
    lab.wait_ready(timeout=60)
    yield lab


def _routes_in(lab: Lab, host: str, prefix: str) -> list[str]:
    """Routes into ``prefix`` other than the lab's own pod bridges (proto kernel)."""
    return [
        r["dst"]
        for r in lab.host(host).routes()
        if r["dst"].startswith(prefix) and r.get("protocol") != "kernel"
    ]


def _links(lab: Lab, host: str) -> list[str]:
    out = json.loads(lab.host(host).sh("ip -j link show"))
    return [link["ifname"] for link in out]


def test_two_networks_with_different_backends_both_reach_every_pod(lab: Lab) -> None:
    for name in lab.hosts:
        host = lab.host(name)
        assert host.subnet_env() is None  # no default network in this mode
        blue, red = host.subnet_env("blue"), host.subnet_env("red")
        assert blue is not None and blue["FLANNEL_NETWORK"] == "10.244.0.0/16"
        assert red is not None and red["FLANNEL_NETWORK"] == "10.246.0.0/16"
        assert "flannel0" in _links(lab, name)  # udp's TUN device
        rules = host.sh("iptables-save -t filter")  # each network its own forward chain
        assert "-A FLANNEL-FWD-blue -s 10.244.0.0/16" in rules
        assert "-A FLANNEL-FWD-red -s 10.246.0.0/16" in rules
    for network in ("blue", "red"):
        matrix = lab.ping_matrix(network=network)
        assert all(matrix.values()), (network, [p for p, ok in matrix.items() if not ok])
    leases = lab.etcdctl("get", "--prefix", "--keys-only", lab.state.etcd_prefix).split()
    for network in ("blue", "red"):
        mine = [k for k in leases if k.startswith(f"{lab.state.etcd_prefix}/{network}/subnets/")]
        assert len(mine) == len(lab.hosts)


def test_deleted_network_config_removes_env_file_routes_and_devices(lab: Lab) -> None:
    hosts = lab.hosts
    assert all(_routes_in(lab, h, "10.246.") for h in hosts)
    assert all(len(_routes_in(lab, h, "10.244.")) >= len(hosts) - 1 for h in hosts)

    lab.delete_network_config("red")
    assert _eventually(lambda: all(lab.host(h).subnet_env("red") is None for h in hosts))
    assert _eventually(lambda: all("flannel0" not in _links(lab, h) for h in hosts))
    assert all(not _routes_in(lab, h, "10.246.") for h in hosts)
    for h in hosts:  # its forward rules went with it, the other network's stay
        rules = lab.host(h).sh("iptables-save -t filter")
        assert "FLANNEL-FWD-red" not in rules and "-A FLANNEL-FWD-blue" in rules
    # the other network is untouched
    matrix = lab.ping_matrix(network="blue")
    assert all(matrix.values()), [p for p, ok in matrix.items() if not ok]

    assert all("flannel.7" in _links(lab, h) for h in hosts)
    lab.delete_network_config("blue")
    assert _eventually(lambda: all(lab.host(h).subnet_env("blue") is None for h in hosts))
    # vxlan keeps its device and routes on a plain stop; a removed network loses both
    assert _eventually(lambda: all("flannel.7" not in _links(lab, h) for h in hosts))
    assert all(not _routes_in(lab, h, "10.244.") for h in hosts)
    for h in hosts:
        assert lab.host(h).daemon_running()

    # a config that appears again brings the network back
    lab.set_network_config("red", RED)
    lab.wait_ready(timeout=60, network="red")
    matrix = lab.ping_matrix(network="red")
    assert all(matrix.values()), [p for p, ok in matrix.items() if not ok]


def test_networks_through_a_listen_server(lab_factory: LabFactory) -> None:
    """--listen --watch-networks serves every network; --remote --watch-networks clients
    join each one through it and leave the one whose config is deleted."""
    lab = lab_factory(
        hosts=2,
        networks={"blue": BLUE, "red": RED},
        server=True,
        server_args=["--watch-networks"],
        daemon_args=["--watch-networks"],
    )
    lab.wait_ready(timeout=60)
    for network in ("blue", "red"):
        matrix = lab.ping_matrix(network=network)
        assert all(matrix.values()), (network, [p for p, ok in matrix.items() if not ok])
    lab.delete_network_config("red")
    assert _eventually(lambda: all(lab.host(h).subnet_env("red") is None for h in lab.hosts))
    assert _eventually(lambda: all("flannel0" not in _links(lab, h) for h in lab.hosts))
    assert all(lab.ping_matrix(network="blue").values())


GREEN = {"Network": "10.247.0.0/16", "Backend": {"Type": "host-gw", "ReconcileInterval": 1}}
TEAL = {"Network": "10.248.0.0/16", "Backend": {"Type": "vxlan", "VNI": 8,
                                               "ReconcileInterval": 1}}  # fmt: skip


def test_hostgw_and_vxlan_networks_keep_each_others_routes(lab_factory: LabFactory) -> None:
    """Both prune protocol-75 routes every second; neither may delete the other's."""
    lab = lab_factory(
        hosts=2, networks={"green": GREEN, "teal": TEAL}, daemon_args=["--watch-networks"]
    )
    lab.wait_ready(timeout=60)
    for network in ("green", "teal"):
        matrix = lab.ping_matrix(network=network)
        assert all(matrix.values()), (network, [p for p, ok in matrix.items() if not ok])
    # Several reconcile passes of both networks later, both route sets are still complete.
    time.sleep(3.5)
    for h in lab.hosts:
        assert len(_routes_in(lab, h, "10.247.")) == len(lab.hosts) - 1, h
        assert len(_routes_in(lab, h, "10.248.")) == len(lab.hosts) - 1, h
    for network in ("green", "teal"):
        matrix = lab.ping_matrix(network=network)
        assert all(matrix.values()), (network, [p for p, ok in matrix.items() if not ok])
