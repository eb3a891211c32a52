"""iperf3 pod-to-pod throughput: udp backend data path vs kernel vxlan (and the plain underlay).

``--mode lab`` (default): two-host flannel labs (flannel.lab: etcd, real ``flannel run``
daemons, a pod per host) per backend, iperf3 TCP from h1's pod to h2's pod:

  udp-c       Backend udp, C data path (TSO/GRO with the TUN, UDP GSO/GRO, 2 threads)
  udp-c-plain Backend udp, C data path without TSO/GRO (FLANNEL_UDP_OFFLOAD=0)
  udp-python  Backend udp with FLANNEL_UDP_DATAPATH=python (the fallback)
  vxlan       Backend vxlan (kernel VXLAN; needs flannel-vxlan installed)
  underlay    Backend host-gw (plain routing over the underlay; needs flannel-hostgw)

``--mode direct``: no daemon, no etcd: two host namespaces on a veth, the forwarder (C or
Python) driven in-process, and kernel VXLAN / plain routes set up with iproute2.

Runs as root; everything lives in namespaces this script creates and deletes.

    python bench/udp_iperf.py [--mode lab|direct] [--seconds 5] [--repeat 3] [--only udp-c,vxlan]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator

from flannel.testing.netns import Netns
from flannel_udp.datapath import fastpath_available
from flannel_udp.testing import pair_hosts

MAC_A, MAC_B = "0a:58:0a:f4:01:00", "0a:58:0a:f4:02:00"


@contextlib.contextmanager
def namespaces() -> Iterator[Callable[[str], Netns]]:
    made: list[Netns] = []

    def make(role: str) -> Netns:
        ns = Netns(f"bench-{role}-{len(made)}")
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.delete()


def _in(netns: str, *argv: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True)
    return done.stdout


def iperf(client: Netns | str, server: Netns | str, server_addr: str, seconds: int) -> float:
    """Gbit/s received by the server for one TCP iperf3 run (namespaces or their names)."""
    client_ns = client if isinstance(client, str) else client.name
    server_ns = server if isinstance(server, str) else server.name
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_addr],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(50):
            if f"{server_addr}:5201" in _in(server_ns, "ss", "-ltn"):
                break
            time.sleep(0.1)
        out = _in(client_ns, "iperf3", "-c", server_addr, "-t", str(seconds), "-J")
        result = json.loads(out)
        if "error" in result:
            raise RuntimeError(f"iperf3: {result['error']}")
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def run_udp(datapath: str, seconds: int, offload: bool | None = None) -> float:
    with namespaces() as make, pair_hosts(make, datapath, offload=offload) as (a, b):
        pod_a, pod_b = a.add_pod(make), b.add_pod(make)
        a.pods[0].sh(f"ping -c 1 -W 2 {pod_b}")
        return iperf(a.pods[0], b.pods[0], str(pod_b), seconds) if pod_a else 0.0


def _two_hosts(make: Callable[[str], Netns]) -> tuple[Netns, Netns]:
    a, b = make("hosta"), make("hostb")
    a.sh(f"ip link add ul0 type veth peer name ul0 netns {b.name}")
    for ns, addr in ((a, "198.18.0.1"), (b, "198.18.0.2")):
        ns.sh(f"ip addr add {addr}/24 dev ul0 && ip link set ul0 up")
        ns.sh("sysctl -qw net.ipv4.ip_forward=1")
    return a, b


def _pod(make: Callable[[str], Netns], host: Netns, third: int, mtu: int) -> tuple[Netns, str]:
    pod = make(f"pod{third}")
    addr, gw = f"10.244.{third}.10", f"10.244.{third}.1"
    host.sh(
        f"ip link add vp0 type veth peer name eth0 netns {pod.name} && "
        f"ip addr add {gw}/32 dev vp0 && ip link set vp0 up && ip route add {addr}/32 dev vp0"
    )
    pod.sh(
        f"ip addr add {addr}/32 dev eth0 && ip link set eth0 mtu {mtu} up && "
        f"ip route add {gw}/32 dev eth0 && ip route add default via {gw} dev eth0"
    )
    return pod, addr


def run_vxlan(seconds: int) -> float:
    with namespaces() as make:
        a, b = _two_hosts(make)
        for ns, local, third, peer_third, peer_mac, peer_ip, mac in (
            (a, "198.18.0.1", 1, 2, MAC_B, "198.18.0.2", MAC_A),
            (b, "198.18.0.2", 2, 1, MAC_A, "198.18.0.1", MAC_B),
        ):
            ns.sh(
                f"ip link add flannel.1 address {mac} type vxlan id 1 local {local} dev ul0 "
                f"dstport 8472 nolearning && ip link set flannel.1 mtu 1450 up && "
                f"ip addr add 10.244.{third}.0/32 dev flannel.1 && "
                f"ip neigh replace 10.244.{peer_third}.0 lladdr {peer_mac} dev flannel.1 "
                "nud permanent && "
                f"bridge fdb replace {peer_mac} dev flannel.1 dst {peer_ip} self permanent && "
                f"ip route replace 10.244.{peer_third}.0/24 via 10.244.{peer_third}.0 "
                "dev flannel.1 onlink"
            )
        pod_a, _ = _pod(make, a, 1, 1450)
        pod_b, addr_b = _pod(make, b, 2, 1450)
        pod_a.sh(f"ping -c 1 -W 2 {addr_b}")
        return iperf(pod_a, pod_b, addr_b, seconds)


def run_underlay(seconds: int) -> float:
    with namespaces() as make:
        a, b = _two_hosts(make)
        a.sh("ip route add 10.244.2.0/24 via 198.18.0.2")
        b.sh("ip route add 10.244.1.0/24 via 198.18.0.1")
        pod_a, _ = _pod(make, a, 1, 1500)
        pod_b, addr_b = _pod(make, b, 2, 1500)
        pod_a.sh(f"ping -c 1 -W 2 {addr_b}")
        return iperf(pod_a, pod_b, addr_b, seconds)


LAB_BACKENDS = {
    "udp-c": ("udp", {"FLANNEL_UDP_DATAPATH": "c"}),
    "udp-c-plain": ("udp", {"FLANNEL_UDP_DATAPATH": "c", "FLANNEL_UDP_OFFLOAD": "0"}),
    "udp-python": ("udp", {"FLANNEL_UDP_DATAPATH": "python"}),
    "vxlan": ("vxlan", {}),
    "underlay": ("host-gw", {}),
}
LAB_PLUGINS = {"vxlan": "flannel_vxlan", "host-gw": "flannel_hostgw", "udp": "flannel_udp"}


def run_lab(name: str, seconds: int) -> float:
    from flannel.lab import Lab
    from flannel.testing.netns import run_tag

    backend, env = LAB_BACKENDS[name]
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the lab's daemons inherit our environment
    try:
        lab = Lab(name=f"bench{backend.replace('-', '')}", hosts=2, backend=backend, tag=run_tag())
        with lab:
            lab.wait_ready(timeout=90, routes=backend != "udp")
            deadline = time.monotonic() + 60
            while not lab.ping("h1", "h2") and time.monotonic() < deadline:
                time.sleep(0.2)
            h1, h2 = lab.host("h1"), lab.host("h2")
            return iperf(h1.pod_netns, h2.pod_netns, str(h2.pod_ip), seconds)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _lab_runner(name: str, seconds: int) -> Callable[[], float]:
    return lambda: run_lab(name, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("lab", "direct"), default="lab")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="udp-c,udp-c-plain,udp-python,vxlan,underlay")
    args = parser.parse_args()
    runners: dict[str, Callable[[], float]] = {
        "udp-c": lambda: run_udp("c", args.seconds),
        "udp-c-plain": lambda: run_udp("c", args.seconds, offload=False),
        "udp-python": lambda: run_udp("python", args.seconds),
        "vxlan": lambda: run_vxlan(args.seconds),
        "underlay": lambda: run_underlay(args.seconds),
    }
    if args.mode == "lab":
        runners = {name: _lab_runner(name, args.seconds) for name in LAB_BACKENDS}
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in runners]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: pick from {','.join(runners)}")
    for name in ("udp-c", "udp-c-plain"):
        if name in wanted and not fastpath_available():
            print(f"{name}: skipped, flannel_udp._fastpath is not built")
            wanted.remove(name)
    if args.mode == "lab":
        for name in list(wanted):
            plugin = LAB_PLUGINS[LAB_BACKENDS[name][0]]
            if importlib.util.find_spec(plugin) is None:
                print(f"{name}: skipped, {plugin} is not installed")
                wanted.remove(name)
    results: dict[str, list[float]] = {name: [] for name in wanted}
    for round_ in range(args.repeat):  # interleave so machine load hits all alike
        for name in wanted:
            gbps = runners[name]()
            results[name].append(gbps)
            print(f"round {round_ + 1} {name:11s} {gbps:6.2f} Gbit/s", flush=True)
    print(f"\nmode {args.mode}: median of {args.repeat} runs of {args.seconds} s "
          "(iperf3 TCP, pod to pod):")  # fmt: skip
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        runs = ", ".join(f"{v:.2f}" for v in results[name])
        print(f"  {name:11s} {value:6.2f} Gbit/s  (runs: {runs})")
    udp = medians.get("udp-c") or medians.get("udp-c-plain") or medians.get("udp-python")
    for ref in ("vxlan", "underlay"):
        if udp and medians.get(ref):
            print(f"  ratio udp/{ref}: {udp / medians[ref]:.3f}")
    if udp:
        print(f"  ratio udp / Go flanneld udp (0.31-0.40 Gbit/s measured earlier on this machine): "
              f"{udp / 0.40:.2f}x-{udp / 0.31:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
