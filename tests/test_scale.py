"""Scale correctness (issue 11): after a burst of lease churn the routes equal etcd, exactly.

A real `flannel run` daemon in a lab host namespace, 300 fake peer leases injected into
the lab's etcd before it starts, then a few seconds of adds, deletes and gateway changes.
``ReconcileInterval`` is an hour, so only the event path can get the routes right: a lost
or misapplied watch event stays visible. Timing is measured by bench/scale.py, not here.
The incremental route writes (``RouteTable.apply``) and the reconcile's verified-bytes
shortcut it relies on are checked against the kernel first.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

import pytest

import flannel_hostgw
from flannel.backend import BackendContext, ExternalInterface
from flannel.config import NetworkConfig
from flannel.events import Event
from flannel.lab import Lab
from flannel.lease import Lease, LeaseAttrs, encode_attrs
from flannel.metrics import Metrics
from flannel.netlink._rtnl import in_netns
from flannel.netlink.routes import Route, RouteTable
from flannel.testing.netns import Netns
from flannel_hostgw.network import HostGWNetwork

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]
T = TypeVar("T")
PREFIX = "/coreos.com/network"
PEERS = 300

# -- RouteTable.apply: the event path's incremental writes --------------------------------


def proto75(ns: Netns) -> set[str]:
    return {line.strip() for line in ns.sh("ip -4 route show proto 75").splitlines()}


def route(i: int, oif: int, gw: str = "198.18.0.2") -> Route:
    return Route(ip_network(f"10.244.{i}.0/24"), ip_address(gw), oif)


def test_apply_writes_only_changes_and_reports_each_refusal(
    netns_factory: Callable[[str], Netns],
) -> None:
    ns = netns_factory("apply")
    ns.sh(
        "ip link add ext0 type veth peer name ext1 && ip link set ext0 up && ip link set ext1 up"
        " && ip addr add 198.18.0.1/24 dev ext0"
    )
    oif = int(ns.sh("cat /sys/class/net/ext0/ifindex"))
    with RouteTable(netns=ns.name) as table:
        table.want_only(route(i, oif) for i in range(1, 51))
        assert len(table.sync().replaced) == 50
        assert table.sync().writes == 0  # verified from the kernel's bytes, nothing written

        # One batch: a new peer, a moved gateway, a removal, an unchanged peer, and a
        # gateway the kernel refuses (not on any connected segment).
        report = table.apply(
            [route(60, oif), route(2, oif, "198.18.0.3"), route(3, oif),
             route(61, oif, "192.0.2.1")],
            [ip_network("10.244.4.0/24")],
        )  # fmt: skip
        assert {str(r.dst) for r in report.replaced} == {"10.244.60.0/24", "10.244.2.0/24"}
        assert [str(r.dst) for r in report.deleted] == ["10.244.4.0/24"]
        assert [str(e.route.dst) for e in report.errors] == ["10.244.61.0/24"]
        assert "192.0.2.1" in str(report.errors[0]) and report.unchanged == 1
        have = proto75(ns)
        assert "10.244.60.0/24 via 198.18.0.2 dev ext0" in have
        assert "10.244.2.0/24 via 198.18.0.3 dev ext0" in have
        assert not any(line.startswith("10.244.4.0/24") for line in have)
        assert len(have) == 50

        # apply never dumps: a route deleted by hand stays gone until the next sync,
        # and forgetting a route that is already gone is not an error.
        ns.sh("ip route del 10.244.5.0/24")
        ns.sh("ip route del 10.244.6.0/24")
        again = table.apply([route(5, oif)], [ip_network("10.244.6.0/24")])
        assert again.writes == 1 and again.unchanged == 1 and not again.errors
        assert not any(line.startswith("10.244.5.0/24") for line in proto75(ns))
        # A change made by hand to a verified route is seen (its bytes differ).
        ns.sh("ip route replace 10.244.7.0/24 via 198.18.0.9 dev ext0 proto 75")
        fixed = table.sync()
        assert {str(r.dst) for r in fixed.replaced} == {"10.244.5.0/24", "10.244.7.0/24"}
        assert [str(e.route.dst) for e in fixed.errors] == ["10.244.61.0/24"]  # retried
        table.forget(ip_network("10.244.61.0/24"))
        assert table.sync().writes == 0
        assert "10.244.7.0/24 via 198.18.0.2 dev ext0" in proto75(ns)
        assert len(proto75(ns)) == 49  # 1..50 minus 4 and 6, plus 60


# -- host-gw's incremental event path -------------------------------------------------------


def run_in_netns(name: str, body: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncio body on a thread inside namespace ``name`` (setns is per thread)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with in_netns(name):
                box["value"] = asyncio.run(body())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def hostgw_peer(n: int, gw: int, v6: bool = False) -> Lease:
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(IPv4Address(f"198.18.0.{gw}"), None, "host-gw"),
        ipv6_subnet=IPv6Network(f"fd00:0:0:{n}::/64") if v6 else None,
    )


def test_hostgw_event_batches_track_leases_exactly(
    netns_factory: Callable[[str], Netns],
) -> None:
    ns = netns_factory("hgwev")
    ns.sh(
        "ip link add ext0 type veth peer name ext1 && ip link set ext0 up && ip link set ext1 up"
        " && ip addr add 198.18.0.1/24 dev ext0"
    )
    index = int(ns.sh("cat /sys/class/net/ext0/ifindex"))
    own = Lease(
        IPv4Network("10.244.1.0/24"), LeaseAttrs(IPv4Address("198.18.0.1"), None, "host-gw")
    )

    async def acquire_lease(**_: Any) -> Lease:
        return own

    config = NetworkConfig(
        network=IPv4Network("10.244.0.0/16"), subnet_len=24, subnet_min=None, subnet_max=None,
        backend_type="host-gw", backend={"Type": "host-gw", "ReconcileInterval": 3600},
    )  # fmt: skip
    ext = ExternalInterface("ext0", index, 1500, IPv4Address("198.18.0.1"), None,
                            IPv4Address("198.18.0.1"), None)  # fmt: skip
    ctx = BackendContext("host-gw", config, ext, acquire_lease, Metrics())

    def kernel() -> set[str]:
        return {line.split(" proto")[0] for line in proto75(ns)}

    async def body() -> list[tuple[set[str], int]]:
        network = await flannel_hostgw.register_network(backend_type="host-gw", ctx=ctx)
        assert isinstance(network, HostGWNetwork)
        seen = []
        batches = [
            [Event.added(hostgw_peer(n, 100 + n)) for n in range(2, 22)],  # full list
            [Event.added(hostgw_peer(5, 205, v6=True))],  # second claim on 10.244.5.0/24
            [Event.removed(hostgw_peer(5, 105))],  # the first claim goes: route stays
            [Event.added(hostgw_peer(6, 206)), Event.removed(hostgw_peer(7, 107)),
             Event.added(hostgw_peer(7, 207)), Event.removed(hostgw_peer(8, 108)),
             Event.added(hostgw_peer(30, 130)), Event.removed(hostgw_peer(30, 130))],
            [Event.removed(hostgw_peer(5, 205, v6=True))],  # last claim: route goes
        ]  # fmt: skip
        for batch in batches:
            await network.handle_events(batch)
            seen.append((kernel(), (await network.reconcile(prune=True)).writes))
        network.routes.close()
        return seen

    expected = {f"10.244.{n}.0/24 via 198.18.0.{100 + n} dev ext0" for n in range(2, 22)}
    steps = [set(expected)]
    expected = (expected - {"10.244.5.0/24 via 198.18.0.105 dev ext0"}) | {
        "10.244.5.0/24 via 198.18.0.205 dev ext0"
    }
    steps += [set(expected), set(expected)]
    expected -= {f"10.244.{n}.0/24 via 198.18.0.{100 + n} dev ext0" for n in (6, 7, 8)}
    expected |= {
        "10.244.6.0/24 via 198.18.0.206 dev ext0",
        "10.244.7.0/24 via 198.18.0.207 dev ext0",
    }
    steps.append(set(expected))
    expected -= {"10.244.5.0/24 via 198.18.0.205 dev ext0"}
    steps.append(set(expected))
    seen = run_in_netns(ns.name, body)
    for i, ((have, reconcile_writes), want) in enumerate(zip(seen, steps, strict=True)):
        assert have == want, f"batch {i}: missing {want - have}, stale {have - want}"
        assert reconcile_writes == 0, f"batch {i}: the event path left work for reconcile"


# Runs in the hub namespace (etcd listens there only): applies a JSON plan of puts and
# deletes, either all at once (128-op transactions) or paced at ``rate`` per second.
ETCD_HELPER = r"""
import asyncio, json, sys, time
from aetcd import Client, rpc

async def main():
    plan = json.load(sys.stdin)
    client = Client(host="198.18.0.1", port=2379)
    await client.connect()
    ops = plan["ops"]
    if plan["rate"] is None:
        for start in range(0, len(ops), 128):
            reqs = [rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=v.encode()))
                    for _, k, v in ops[start:start + 128]]
            await client.kvstub.Txn(rpc.TxnRequest(success=reqs), timeout=30,
                                    metadata=client.metadata)
    else:
        t_next = time.monotonic()
        for op, key, value in ops:
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
            t_next += 1.0 / plan["rate"]
            if op == "put":
                await client.put(key.encode(), value.encode())
            else:
                await client.delete(key.encode())
    listing = await client.get_prefix(plan["prefix"].encode())
    print(json.dumps({bytes(kv.key).decode(): bytes(kv.value).decode() for kv in listing}))
    await client.close()

asyncio.run(main())
"""


def subnet(i: int) -> IPv4Network:
    return IPv4Network((int(IPv4Address("10.1.0.0")) + 256 * i, 24))


def key(i: int) -> str:
    net = subnet(i)
    return f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"


def value(i: int, backend: str, gw_offset: int = 0) -> str:
    ip = IPv4Address("198.19.0.1") + i + gw_offset
    data = {"VNI": 1, "VtepMAC": f"4e:8a:0b:00:{i >> 8 & 255:02x}:{i & 255:02x}"}
    attrs = LeaseAttrs(ip, None, backend, data if backend == "vxlan" else None)
    return encode_attrs(attrs).decode()


def etcd_apply(lab: Lab, ops: list[tuple[str, str, str]], rate: float | None) -> dict[str, str]:
    """Apply ``ops`` in the lab's etcd; return every lease key -> value afterwards."""
    plan = json.dumps({"ops": ops, "rate": rate, "prefix": f"{PREFIX}/subnets/"})
    done = subprocess.run(
        ["ip", "netns", "exec", lab.state.hub, sys.executable, "-c", ETCD_HELPER],
        input=plan, text=True, capture_output=True, timeout=120,
        env=dict(os.environ, GRPC_VERBOSITY="ERROR"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    leases: dict[str, str] = json.loads(done.stdout)
    return leases


def expected_state(leases: dict[str, str], own: str | None, backend: str) -> set[str]:
    """What the host must hold for every peer lease (ours excluded): its route, and for
    vxlan also its neighbour and FDB entry."""
    out = set()
    for k, v in leases.items():
        first, _, length = k.rsplit("/", 1)[1].partition("-")
        dst = f"{first}/{length}"
        if dst == own:
            continue
        attrs = json.loads(v)
        if backend == "host-gw":
            out.add(f"route {dst} via {attrs['PublicIP']}")
        else:
            mac = attrs["BackendData"]["VtepMAC"]
            out |= {f"route {dst} via {first}", f"neigh {first} {mac}",
                    f"fdb {mac} {attrs['PublicIP']}"}  # fmt: skip
    return out


def kernel_state(lab: Lab, host: str, backend: str) -> set[str]:
    """Our routes (proto 75) on the host and, for vxlan, flannel.1's neighbours and FDB."""
    h = lab.host(host)
    routes = json.loads(h.sh("ip -4 -j route show table main proto 75") or "[]")
    out = {f"route {r['dst']} via {r.get('gateway')}" for r in routes}
    if backend == "vxlan":
        neighs = json.loads(h.sh("ip -4 -j neigh show dev flannel.1") or "[]")
        out |= {f"neigh {n['dst']} {n.get('lladdr')}" for n in neighs}
        fdbs = json.loads(h.sh("bridge -j fdb show dev flannel.1") or "[]")
        out |= {f"fdb {f['mac']} {f.get('dst')}" for f in fdbs if f.get("dst")}
    return out


def wait_equal(lab: Lab, host: str, backend: str, want: set[str], timeout: float) -> set[str]:
    """Poll until the host's state equals ``want`` (generous deadline; returns the last view)."""
    deadline = time.monotonic() + timeout
    have = kernel_state(lab, host, backend)
    while have != want and time.monotonic() < deadline:
        time.sleep(0.2)
        have = kernel_state(lab, host, backend)
    return have


@pytest.mark.lab
@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_routes_equal_leases_after_churn(lab_factory: LabFactory, backend: str) -> None:
    config = {
        "Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.250.0.0",
        "SubnetMax": "10.250.255.0", "Backend": {"Type": backend, "ReconcileInterval": 3600},
    }  # fmt: skip
    lab = lab_factory(hosts=0, backend=backend, config=config)
    name = lab.add_host(start=False)
    host = lab.host(name)
    host.sh("ip addr add 198.19.255.254/16 dev eth0")  # fake peers' segment (host-gw)
    etcd_apply(lab, [("put", key(i), value(i, backend)) for i in range(PEERS)], rate=None)

    lab.start_daemon(name)
    lab.wait_ready(timeout=60, routes=False)
    own = host.subnet
    leases = etcd_apply(lab, [], rate=None)
    want = expected_state(leases, own, backend)
    assert len(want) == PEERS * (1 if backend == "host-gw" else 3)
    have = wait_equal(lab, name, backend, want, timeout=60)
    assert have == want, (
        f"initial sync: missing {sorted(want - have)[:5]}, stale {sorted(have - want)[:5]}"
    )

    # Churn: ~3 s at 60 changes/s of adds, deletes and gateway moves, interleaved; some
    # keys are added and deleted again, some deleted and re-added within the burst.
    ops: list[tuple[str, str, str]] = []
    for n in range(60):
        new, old, moved = PEERS + n, 3 * n, 3 * n + 1
        ops.append(("put", key(new), value(new, backend)))
        ops.append(("del", key(old), ""))
        ops.append(("put", key(moved), value(moved, backend, gw_offset=1000)))
        if n % 10 == 0:
            ops.append(("del", key(new), ""))
            ops.append(("put", key(old), value(old, backend)))
    leases = etcd_apply(lab, ops, rate=60)
    want = expected_state(leases, own, backend)
    have = wait_equal(lab, name, backend, want, timeout=30)
    assert host.daemon_running(), lab.logs(name)[-2000:]
    assert have == want, (
        f"after churn: {len(want - have)} missing (e.g. {sorted(want - have)[:5]}), "
        f"{len(have - want)} stale (e.g. {sorted(have - want)[:5]})"
    )
