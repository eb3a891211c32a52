"""host-gw through the lab: real etcd, real `flannel run` daemons, real kernel, namespaces."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import ip_network

import pytest

from flannel.lab import Lab
from flannel.lab.state import state_root
from flannel.lab.system import proc_alive
from flannel.testing.netns import run_tag

pytestmark = [pytest.mark.netns, pytest.mark.lab]

LabFactory = Callable[..., Lab]
HOSTGW = {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "ReconcileInterval": 1}}


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``check`` until true or a generous deadline passes (no timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def has_route(lab: Lab, host: str, subnet: str) -> bool:
    return bool(lab.host(host).routes_to([subnet]))


def lab_leftovers(lab: Lab) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in names.splitlines() if line.startswith(lab.state.prefix)]


@pytest.fixture(scope="module")
def lab3(module_lab_factory: LabFactory) -> Lab:
    lab = module_lab_factory(hosts=3, config=HOSTGW)
    lab.wait_ready(timeout=90)
    return lab


def test_three_hosts_full_ping_matrix(lab3: Lab) -> None:
    matrix = lab3.ping_matrix()
    assert len(matrix) == 6
    assert all(matrix.values()), [pair for pair, ok in matrix.items() if not ok]
    route = next(r for r in lab3.host("h1").routes() if r["dst"] == lab3.host("h2").subnet)
    assert route["gateway"] == lab3.host("h2").address and route["dev"] == "eth0"
    assert route["protocol"] in ("75", 75)


def test_route_deleted_by_hand_is_back_within_a_reconcile_period(lab3: Lab) -> None:
    target = lab3.host("h2").subnet
    assert target is not None
    lab3.host("h1").sh(f"ip route del {target}")
    assert not has_route(lab3, "h1", target)
    assert eventually(lambda: has_route(lab3, "h1", target), timeout=20)
    assert lab3.ping("h1", "h2")


def test_restarted_host_keeps_its_subnet_and_peers_keep_its_route(lab3: Lab) -> None:
    subnet = lab3.host("h1").subnet
    assert subnet is not None
    monitors = [
        subprocess.Popen(
            ["ip", "-n", lab3.host(peer).netns, "monitor", "route"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for peer in ("h2", "h3")
    ]
    try:
        time.sleep(0.2)  # let the monitors subscribe
        lab3.restart_daemon("h1")
        lab3.wait_ready(timeout=60)
        # One reconcile period after the restart: the peers had every chance to delete.
        time.sleep(1.5)
    finally:
        for mon in monitors:
            mon.terminate()
    events = "".join(mon.communicate(timeout=10)[0] for mon in monitors)
    assert lab3.host("h1").subnet == subnet
    assert not [line for line in events.splitlines() if line.startswith(f"Deleted {subnet}")]
    assert all(lab3.ping_matrix().values())


def test_a_host_joins_then_leaves(lab3: Lab) -> None:
    name = lab3.add_host()
    lab3.wait_ready(timeout=60)
    others = [h for h in lab3.hosts if h != name]
    assert all(lab3.ping(src, name) for src in others)
    assert all(lab3.ping(name, dst) for dst in others)
    subnet = lab3.host(name).subnet
    assert subnet is not None
    lab3.remove_host(name, delete_lease=True)
    assert eventually(lambda: not any(has_route(lab3, h, subnet) for h in others), timeout=30)
    assert name not in lab3.hosts


def test_ten_hosts_started_at_once_route_every_subnet(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=10)
    lab.wait_ready(timeout=120)  # every host routes every other subnet
    subnets = {h: lab.host(h).subnet for h in lab.hosts}
    assert len(set(subnets.values())) == 10
    for host in lab.hosts:
        others = {s for h, s in subnets.items() if h != host and s}
        assert lab.host(host).routes_to(others) == others
    sample = lab.ping_matrix(sample=20, seed=4)
    assert all(sample.values()), [pair for pair, ok in sample.items() if not ok]


def test_two_segments_skip_cross_segment_peers_with_a_warning(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=4, segments=2, config=HOSTGW)  # h1,h3: seg 0; h2,h4: seg 1
    lab.wait_ready(timeout=90, routes=False)
    sub = {h: lab.host(h).subnet or "" for h in lab.hosts}
    assert eventually(lambda: has_route(lab, "h1", sub["h3"]) and has_route(lab, "h2", sub["h4"]))
    assert lab.ping("h1", "h3") and lab.ping("h4", "h2")
    assert not has_route(lab, "h1", sub["h2"]) and not has_route(lab, "h1", sub["h4"])
    net = ip_network(sub["h2"])
    key = f"{net.network_address}-{net.prefixlen}"
    assert eventually(lambda: f"skipping peer {key}" in lab.logs("h1"))
    warning = next(line for line in lab.logs("h1").splitlines() if f"skipping peer {key}" in line)
    assert "198.18.0.0/24" in warning and "not on the L2 segment" in warning


def test_down_removes_everything_even_after_a_failure_or_crash(lab_factory: LabFactory) -> None:
    lab = Lab(name="fail", hosts=1, tag=run_tag())
    with pytest.raises(RuntimeError, match="midway"):
        with lab:
            lab.wait_ready(timeout=60, routes=False)
            pids = [h.daemon for h in lab.state.hosts.values()] + [lab.state.etcd]
            raise RuntimeError("test failed midway")
    assert lab_leftovers(lab) == [] and not any(proc_alive(p) for p in pids)
    assert not (state_root() / lab.state.prefix).exists()

    # A crashed controller leaves everything running; down from the state file cleans up.
    tag = run_tag()
    crashed = subprocess.run(
        [sys.executable, "-c",
         f"import os; from flannel.lab import Lab; Lab(name='crash', hosts=1, tag={tag!r}).up();"
         " os._exit(3)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert crashed.returncode == 3, crashed.stderr
    left = Lab.load("crash", tag=tag)
    pids = [h.daemon for h in left.state.hosts.values()] + [left.state.etcd]
    assert lab_leftovers(left) and all(proc_alive(p) for p in pids)
    left.down()
    assert lab_leftovers(left) == [] and not any(proc_alive(p) for p in pids)


def test_dual_stack_routes_and_pings_both_families(lab_factory: LabFactory) -> None:
    lab = lab_factory(hosts=2, ipv6=True, config=HOSTGW)
    lab.wait_ready(timeout=90)  # includes a route to the peer's IPv6 subnet
    assert lab.host("h1").ipv6_subnet is not None
    route6 = next(
        r for r in lab.host("h1").routes(family=6) if r["dst"] == lab.host("h2").ipv6_subnet
    )
    assert route6["gateway"] == "2001:db8::c" and route6["dev"] == "eth0"
    assert all(lab.ping_matrix(family=6).values()) and all(lab.ping_matrix().values())
