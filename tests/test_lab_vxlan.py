"""vxlan through the lab: real etcd, real `flannel run` daemons, real kernel, namespaces."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

import pytest

from flannel.lab import Lab

pytestmark = [pytest.mark.netns, pytest.mark.lab]

LabFactory = Callable[..., Lab]
PERIOD = 1  # ReconcileInterval (s) in these labs


def vxlan_config(**backend: Any) -> dict[str, Any]:
    return {
        "Network": "10.244.0.0/16",
        "Backend": {"Type": "vxlan", "ReconcileInterval": PERIOD, **backend},
    }


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``check`` until true or a generous deadline passes (no timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def full_matrix(lab: Lab, family: int = 4, sample: int | None = None) -> list[Any]:
    """Failed pairs once the matrix is full or the deadline passed (first pings after
    readiness may race the pod's own setup, so failed pairs are retried)."""
    failed: list[Any] = []

    def check() -> bool:
        nonlocal failed
        matrix = lab.ping_matrix(family=family, sample=sample, seed=1)
        failed = [pair for pair, ok in matrix.items() if not ok]
        return not failed

    eventually(check, timeout=30)
    return failed


def leases(lab: Lab) -> dict[str, dict[str, Any]]:
    """subnet (``10.244.5.0/24``) -> lease value, straight from etcd."""
    out = lab.etcdctl("get", "--prefix", f"{lab.state.etcd_prefix}/subnets/")
    lines = out.splitlines()
    result = {}
    for key, value in zip(lines[::2], lines[1::2], strict=True):
        v4 = key.rsplit("/", 1)[1].split("&")[0]
        net, plen = v4.rsplit("-", 1)
        result[f"{net}/{plen}"] = json.loads(value)
    return result


def raw_lease(lab: Lab, subnet: str) -> str:
    net, plen = subnet.split("/")
    return lab.etcdctl("get", "--print-value-only", f"{lab.state.etcd_prefix}/subnets/{net}-{plen}")


def entries(lab: Lab, host: str, dev: str = "flannel.1", family: int = 4) -> dict[str, set[Any]]:
    h = lab.host(host)

    def rows(cmd: str) -> list[dict[str, Any]]:
        out = h.sh(cmd)
        return json.loads(out) if out.strip() else []

    return {
        "neigh": {(r["dst"], r["lladdr"])
                  for r in rows(f"ip -{family} -j neigh show dev {dev} nud permanent")},
        "fdb": {(r["mac"], r["dst"]) for r in rows(f"bridge -j fdb show dev {dev}") if "dst" in r},
        "route": {(r["dst"], r.get("gateway"))
                  for r in rows(f"ip -{family} -j route show dev {dev}")
                  if r.get("protocol") != "kernel"},
    }  # fmt: skip


def expected_entries(lab: Lab, host: str) -> dict[str, set[Any]]:
    """What ``host`` must have on flannel.1 for every other lease in etcd."""
    own = lab.host(host).subnet
    want: dict[str, set[Any]] = {"neigh": set(), "fdb": set(), "route": set()}
    for subnet, value in leases(lab).items():
        if subnet == own:
            continue
        gateway = subnet.split("/")[0]
        mac = value["BackendData"]["VtepMAC"]
        want["neigh"].add((gateway, mac))
        want["fdb"].add((mac, value["PublicIP"]))
        want["route"].add((subnet, gateway))
    return want


def device_mac(lab: Lab, host: str, dev: str = "flannel.1") -> str:
    return str(json.loads(lab.host(host).sh(f"ip -j link show {dev}"))[0]["address"])


# -- three hosts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab3(module_lab_factory: LabFactory) -> Lab:
    lab = module_lab_factory(hosts=3, backend="vxlan", config=vxlan_config())
    lab.wait_ready(timeout=90)
    return lab


def test_three_hosts_full_ping_matrix(lab3: Lab) -> None:
    assert full_matrix(lab3) == []
    for host in lab3.hosts:
        assert entries(lab3, host) == expected_entries(lab3, host)


def test_lease_bytes_match_flanneld(lab3: Lab) -> None:
    h1 = lab3.host("h1")
    assert h1.subnet is not None
    raw = raw_lease(lab3, h1.subnet).strip()
    mac = device_mac(lab3, "h1")
    assert raw == (
        f'{{"PublicIP":"{h1.address}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
    )
    assert (h1.subnet_env() or {}).get("FLANNEL_MTU") == "1450"


def test_deleted_entries_come_back(lab3: Lab) -> None:
    h2 = lab3.host("h2")
    assert h2.subnet is not None
    gateway = h2.subnet.split("/")[0]
    mac = device_mac(lab3, "h2")
    want = expected_entries(lab3, "h1")
    lab3.host("h1").sh(
        f"ip neigh del {gateway} dev flannel.1; "
        f"bridge fdb del {mac} dev flannel.1 dst {h2.address} self; "
        f"ip route del {h2.subnet}"
    )
    # The reconcile period is 1 s; allow generous slack on a loaded machine.
    assert eventually(lambda: entries(lab3, "h1") == want, timeout=15 * PERIOD)
    assert "Route recovered" in lab3.logs("h1") or "programmed" in lab3.logs("h1")
    assert lab3.ping("h1", "h2")


def test_restart_keeps_subnet_mac_and_peer_traffic(lab3: Lab) -> None:
    h1 = lab3.host("h1")
    subnet, mac = h1.subnet, device_mac(lab3, "h1")
    peers_before = {h: entries(lab3, h) for h in ("h2", "h3")}
    target = lab3.host("h3").pod_ip
    assert target is not None
    # A ping loop between two *other* pods across the restart: 100 pings, 50 ms apart.
    loop = subprocess.Popen(
        ["ip", "netns", "exec", lab3.host("h2").pod_netns,
         "ping", "-c", "100", "-i", "0.05", "-W", "1", target],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        syncs = lab3.logs("h1").count("vxlan initial sync")
        lab3.restart_daemon("h1")
        assert eventually(lambda: lab3.logs("h1").count("vxlan initial sync") > syncs, 60)
        lab3.wait_ready(timeout=60)
        out, _ = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert h1.subnet == subnet
    assert device_mac(lab3, "h1") == mac
    assert subnet is not None
    assert leases(lab3)[subnet]["BackendData"]["VtepMAC"] == mac
    assert {h: entries(lab3, h) for h in ("h2", "h3")} == peers_before
    # The restarted daemon found everything in place: its initial sync wrote nothing.
    last_sync = [ln for ln in lab3.logs("h1").splitlines() if "vxlan initial sync" in ln][-1]
    assert "0 peer families programmed" in last_sync and "0 routes written" in last_sync
    sent, received = map(int, re.findall(r"(\d+) packets transmitted, (\d+) received", out)[0])
    assert sent == received == 100, out
    assert full_matrix(lab3) == []


# -- many hosts ---------------------------------------------------------------------------

HOSTS = 25


def test_many_hosts_started_together(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=HOSTS, backend="vxlan", config=vxlan_config())
    lab.wait_ready(timeout=240)
    assert len(leases(lab)) == HOSTS

    def all_programmed() -> bool:
        return all(entries(lab, h) == expected_entries(lab, h) for h in lab.hosts)

    assert eventually(all_programmed, timeout=60)
    for host in lab.hosts:
        got = entries(lab, host)
        assert len(got["neigh"]) == len(got["fdb"]) == len(got["route"]) == HOSTS - 1
    assert full_matrix(lab, sample=40) == []


# -- DirectRouting ------------------------------------------------------------------------


def test_direct_routing_over_two_segments(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=4, backend="vxlan", segments=2, config=vxlan_config(DirectRouting=True))
    lab.wait_ready(timeout=90)
    h1, h2, h3 = lab.host("h1"), lab.host("h2"), lab.host("h3")
    assert h1.state.segment == h3.state.segment != h2.state.segment
    routes = {r["dst"]: r for r in h1.routes()}
    assert h3.subnet is not None and h2.subnet is not None
    same = routes[h3.subnet]
    assert same["gateway"] == h3.address and same["dev"] == "eth0"
    other = routes[h2.subnet]
    assert other["gateway"] == h2.subnet.split("/")[0] and other["dev"] == "flannel.1"
    assert "onlink" in other["flags"]
    got = entries(lab, "h1")
    assert {ip for ip, _ in got["neigh"]} == {
        lab.host(h).subnet.split("/")[0]  # type: ignore[union-attr]
        for h in ("h2", "h4")
    }
    assert full_matrix(lab) == []


# -- dual-stack ---------------------------------------------------------------------------


def test_dual_stack_ipv6_pings(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=3, backend="vxlan", ipv6=True, config=vxlan_config())
    lab.wait_ready(timeout=90)
    assert eventually(
        lambda: all(len(entries(lab, h, "flannel-v6.1", 6)["route"]) == 2 for h in lab.hosts)
    )
    assert full_matrix(lab, family=6) == []
    assert full_matrix(lab, family=4) == []
    h1 = lab.host("h1")
    assert h1.subnet is not None
    value = leases(lab)[h1.subnet]
    assert value["BackendV6Data"] == {"VNI": 1, "VtepMAC": device_mac(lab, "h1", "flannel-v6.1")}
    assert h1.state.address6 is not None
    assert ip_address(value["PublicIPv6"]) == ip_address(h1.state.address6)
