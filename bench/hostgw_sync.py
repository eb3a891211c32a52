"""Benchmark: host-gw's route sync (flannel.netlink.routes) vs the `ip -batch` floor.

Runs only inside a throwaway network namespace (root needed). Prints, for N routes
``10.x.y.0/24 via 198.18.0.2 dev ext0``: the initial batched sync, a no-change reconcile
(dump only, no writes), a prune of every route, and iproute2's ``ip -batch`` adding the
same routes. Usage: ``python bench/hostgw_sync.py [N ...]`` (default 1000 10000).
"""

from __future__ import annotations

import subprocess
import sys
import time
from ipaddress import ip_address, ip_network

from flannel.netlink.routes import Route, RouteTable
from flannel.testing.netns import Netns


def bench(n: int) -> None:
    with Netns("bench") as ns:
        ns.sh(
            "ip link add ext0 type veth peer name ext1 && ip link set ext0 up && "
            "ip link set ext1 up && ip addr add 198.18.0.1/24 dev ext0"
        )
        oif = int(ns.sh("cat /sys/class/net/ext0/ifindex"))
        gw = ip_address("198.18.0.2")
        routes = [Route(ip_network(f"10.{i >> 8}.{i & 255}.0/24"), gw, oif) for i in range(n)]
        with RouteTable(netns=ns.name) as table:
            table.want_only(routes)
            t0 = time.perf_counter()
            first = table.sync()
            t1 = time.perf_counter()
            again = table.sync()
            t2 = time.perf_counter()
            table.want_only([])
            pruned = table.sync()
            t3 = time.perf_counter()
        assert len(first.replaced) == n and again.writes == 0 and len(pruned.deleted) == n
        script = "".join(f"route add {r.dst} via {gw} dev ext0\n" for r in routes)
        t4 = time.perf_counter()
        subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=script, text=True, check=True)
        t5 = time.perf_counter()
        print(
            f"{n:>6} routes: sync {1000 * (t1 - t0):7.1f} ms | no-change reconcile "
            f"{1000 * (t2 - t1):7.1f} ms (0 writes) | prune all {1000 * (t3 - t2):7.1f} ms | "
            f"ip -batch floor {1000 * (t5 - t4):7.1f} ms | ratio {(t1 - t0) / (t5 - t4):.2f}x"
        )


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["1000", "10000"]:
        bench(int(arg))
