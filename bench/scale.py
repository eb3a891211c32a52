"""Benchmark: one `flannel run` daemon against P fake peer leases (issue 11). Not a test.

Builds a lab (hub namespace with etcd, one host namespace), gives the host's ``eth0`` the
extra on-link prefix 198.19.0.0/16 so fake peers' public IPs 198.19.x.y are valid host-gw
gateways, injects P leases (flanneld's bytes, one shared etcd lease as TTL, 128-put
transactions), measures ``acquire_lease`` with P leases present, the ``ip -batch`` floor
for the same kernel entries in a scratch namespace, then starts the daemon and prints:
time to subnet.env, time until all P routes (vxlan: also FDB and neighbour entries) are
in the kernel, daemon CPU and RSS, idle CPU; then a churn phase (adds and deletes at a
fixed rate, timestamped against ``ip monitor route``) and the missing/stale entries left
against etcd. Root needed; only lab namespaces are touched.

    python bench/scale.py --peers 1000,5000,10000 --backend host-gw \\
        [--churn-rate 100 --churn-seconds 10 --idle-seconds 20 --json out.json]

etcd runs in the hub namespace, so a helper (this file with ``_agent``) runs there under
``ip netns exec`` and does every etcd operation, timestamped with CLOCK_MONOTONIC (the
same clock in every namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

PREFIX = "/coreos.com/network"
FAKE_NET = "198.19.0.0/16"
HOST_FAKE_ADDR = "198.19.255.254/16"
OWN_RANGE = ("10.250.0.0", "10.250.255.0")  # the daemon's own lease, apart from the peers


def peer_subnet(i: int) -> IPv4Network:
    return IPv4Network((int(IPv4Address("10.1.0.0")) + 256 * i, 24))


def peer_ip(i: int) -> IPv4Address:
    return IPv4Address("198.19.0.1") + i


def peer_mac(i: int) -> str:
    return f"4e:8a:0b:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def lease_value(i: int, backend: str) -> bytes:
    from flannel.lease import LeaseAttrs, encode_attrs

    data = {"VNI": 1, "VtepMAC": peer_mac(i)} if backend == "vxlan" else None
    return encode_attrs(LeaseAttrs(public_ip=peer_ip(i), backend_type=backend, backend_data=data))


def lease_key(i: int) -> str:
    net = peer_subnet(i)
    return f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"


# --------------------------------------------------------------------------- agent (hub)


async def _agent(endpoint: str) -> None:
    """JSON-lines etcd helper: one request per stdin line, one reply per stdout line."""
    import asyncio

    from aetcd import rpc

    from flannel.config import parse_config
    from flannel.etcd import EtcdClientConfig
    from flannel.etcd_manager import EtcdSubnetManager
    from flannel.lease import LeaseAttrs

    mgr = EtcdSubnetManager(EtcdClientConfig.from_flags(f"http://{endpoint}"), PREFIX)
    await mgr.connect()
    client, _ = await mgr.conn.client()
    loop = asyncio.get_running_loop()
    ttl_lease = await mgr.registry.grant(3600)

    async def put(i: int, backend: str) -> None:
        await client.put(lease_key(i).encode(), lease_value(i, backend), lease=ttl_lease)

    async def handle(req: dict[str, Any]) -> Any:
        op = req["op"]
        if op == "inject":
            t0 = time.monotonic()
            batches = []
            for start in range(req["start"], req["start"] + req["count"], 128):
                stop = min(req["start"] + req["count"], start + 128)
                ops = [
                    rpc.RequestOp(
                        request_put=rpc.PutRequest(
                            key=lease_key(i).encode(),
                            value=lease_value(i, req["backend"]),
                            lease=ttl_lease,
                        )
                    )
                    for i in range(start, stop)
                ]
                batches.append(
                    client.kvstub.Txn(
                        rpc.TxnRequest(success=ops), timeout=60, metadata=client.metadata
                    )
                )
            for i in range(0, len(batches), 16):
                await asyncio.gather(*batches[i : i + 16])
            return time.monotonic() - t0
        if op == "acquire":
            config = parse_config((await mgr.get_config_raw()) or b"")
            times = []
            for r in range(req["rounds"]):
                attrs = LeaseAttrs(public_ip=IPv4Address("198.19.254.1") + r, backend_type="x")
                t0 = time.monotonic()
                lease = await mgr.acquire_lease(config, attrs)
                times.append(time.monotonic() - t0)
                await mgr.registry.delete(lease)
            return times
        if op == "churn":
            # Alternate adds and deletes, one every 1/rate s, on a fixed schedule.
            adds, dels = list(req["adds"]), list(req["dels"])
            period = 1.0 / req["rate"]
            done = []
            t_next = time.monotonic()
            for n in range(len(adds) + len(dels)):
                delay = t_next - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                t_next += period
                sent = time.monotonic()
                if (n % 2 == 0 and adds) or not dels:
                    i = adds.pop(0)
                    await put(i, req["backend"])
                    kind = "add"
                else:
                    i = dels.pop(0)
                    await client.delete(lease_key(i).encode())
                    kind = "del"
                done.append([kind, i, sent, time.monotonic()])
            return done
        if op == "list":
            got = await client.get_prefix(f"{PREFIX}/subnets/".encode())
            return [[bytes(kv.key).decode(), bytes(kv.value).decode()] for kv in got]
        raise ValueError(f"unknown agent op {op!r}")

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            reply: dict[str, Any] = {"ok": await handle(json.loads(line))}
        except Exception as exc:  # report to the driver, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await mgr.close()


class Agent:
    def __init__(self, hub: str, endpoint: str) -> None:
        argv = ["ip", "netns", "exec", hub, sys.executable, __file__, "_agent", endpoint]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def call(self, **req: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"etcd agent exited (rc {self.proc.poll()}) during {req['op']}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"etcd agent {req['op']}: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- kernel probes


class Kernel:
    """Cheap counts of the host namespace's flannel entries (raw netlink dumps)."""

    def __init__(self, netns: str, vxlan_dev: str | None) -> None:
        from flannel.netlink import neigh
        from flannel.netlink._rtnl import RtnlSocket, in_netns

        self.routes_sock = RtnlSocket(netns)
        with in_netns(netns):
            self.neigh = neigh.NeighTable(neigh.RtnlSocket())
        self.netns = netns
        self.vxlan_dev = vxlan_dev
        self._vx_index: int | None = None

    def route_count(self) -> int:
        return sum(
            1 for body in self.routes_sock.dump_route_bodies(socket.AF_INET, 254, 75)
            if body[5] == 75
        )  # fmt: skip

    def route_dsts(self) -> set[str]:
        return {str(r.dst) for r in self.routes_sock.dump_routes(socket.AF_INET, 254, 75)}

    def vx_index(self) -> int | None:
        if self._vx_index is None and self.vxlan_dev is not None:
            path = f"/sys/class/net/{self.vxlan_dev}/ifindex"
            out = subprocess.run(["ip", "netns", "exec", self.netns, "cat", path],
                                 capture_output=True, text=True)  # fmt: skip
            if out.returncode == 0:
                self._vx_index = int(out.stdout)
        return self._vx_index

    def neighs(self) -> set[str]:
        index = self.vx_index()
        if index is None:
            return set()
        return {str(e.ip) for e in self.neigh.dump_neigh(index)}

    def fdbs(self) -> set[str]:
        index = self.vx_index()
        if index is None:
            return set()
        return {f"{e.mac}|{e.dst}" for e in self.neigh.dump_fdb(index)}

    def close(self) -> None:
        self.routes_sock.close()
        self.neigh.close()


def proc_cpu(pid: int) -> float:
    """utime+stime of ``pid`` in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def log_delta(text: str, first: str, second: str) -> float | None:
    """Seconds between the daemon's log lines containing ``first`` and ``second``."""
    import re
    from datetime import datetime

    stamps: dict[str, float] = {}
    for line in text.splitlines():
        match = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z", line)
        if match is None:
            continue
        for needle in (first, second):
            if needle in line and needle not in stamps:
                stamps[needle] = datetime.fromisoformat(match.group(1)).timestamp()
    if first in stamps and second in stamps:
        return stamps[second] - stamps[first]
    return None


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``check``; return the monotonic time it first held, None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    return None


# --------------------------------------------------------------------------- floor


def kernel_floor(backend: str, p: int) -> float:
    """Seconds ``ip -batch`` (and ``bridge -batch``) take for the same entries."""
    from flannel.testing.netns import Netns

    with Netns(f"floor{p}") as ns:
        ns.sh(
            "ip link add ext0 type veth peer name ext1 && ip link set ext0 up && "
            f"ip link set ext1 up && ip addr add {HOST_FAKE_ADDR} dev ext0"
        )
        if backend == "vxlan":
            ns.sh(
                "ip link add flannel.1 type vxlan id 1 local 198.19.255.254 dev ext0 "
                "dstport 8472 nolearning && ip link set flannel.1 up && "
                "ip addr add 10.250.0.0/32 dev flannel.1"
            )
            lines, fdb = [], []
            for i in range(p):
                net = peer_subnet(i)
                lines.append(
                    f"neigh replace {net.network_address} lladdr {peer_mac(i)} dev flannel.1 "
                    "nud permanent"
                )
                lines.append(
                    f"route replace {net} via {net.network_address} dev flannel.1 onlink proto 75"
                )
                fdb.append(f"fdb append {peer_mac(i)} dev flannel.1 dst {peer_ip(i)} self "
                           "permanent")  # fmt: skip
            t0 = time.monotonic()
            subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input="\n".join(lines) + "\n",
                           text=True, check=True)  # fmt: skip
            subprocess.run(["bridge", "-n", ns.name, "-batch", "-"], input="\n".join(fdb) + "\n",
                           text=True, check=True)  # fmt: skip
            return time.monotonic() - t0
        script = "".join(f"route add {peer_subnet(i)} via {peer_ip(i)} dev ext0 proto 75\n"
                         for i in range(p))  # fmt: skip
        t0 = time.monotonic()
        subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=script, text=True, check=True)
        return time.monotonic() - t0


# --------------------------------------------------------------------------- churn monitor


class RouteMonitor:
    """``ip monitor route`` in the host namespace, each line timestamped on arrival."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "-n", netns, "monitor", "route"], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.2)  # subscribed

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.thread.join(timeout=5)

    def latencies(self, ops: list[list[Any]]) -> tuple[list[float], int]:
        """Per-op delay from the etcd request to its route change; and ops never seen."""
        seen: dict[tuple[str, str], list[float]] = {}
        for t, line in self.lines:
            deleted = line.startswith("Deleted ")
            dst = line.removeprefix("Deleted ").split()[0] if line else ""
            seen.setdefault(("del" if deleted else "add", dst), []).append(t)
        out, lost = [], 0
        self.per_op: list[float | None] = []
        for kind, i, sent, _acked in ops:
            times = [t for t in seen.get((kind, str(peer_subnet(i))), []) if t >= sent]
            if times:
                out.append(times[0] - sent)
                self.per_op.append(times[0] - sent)
            else:
                lost += 1
                self.per_op.append(None)
        return out, lost


# --------------------------------------------------------------------------- one run


def run_one(p: int, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from flannel.lab import Lab
    from flannel.testing.netns import run_tag

    backend = args.backend
    tag = run_tag()
    config = {
        "Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": OWN_RANGE[0],
        "SubnetMax": OWN_RANGE[1],
        "Backend": {"Type": backend, "ReconcileInterval": args.reconcile_interval},
    }  # fmt: skip
    res: dict[str, Any] = {"backend": backend, "peers": p}
    lab = Lab(name=f"sc{p}", hosts=0, backend=backend, config=config, tag=tag)
    agent: Agent | None = None
    kernel: Kernel | None = None
    try:
        lab.up()
        name = lab.add_host(start=False)
        host = lab.host(name)
        host.sh(f"ip addr add {HOST_FAKE_ADDR} dev eth0")
        agent = Agent(lab.state.hub, "198.18.0.1:2379")
        res["inject_s"] = agent.call(op="inject", start=0, count=p, backend=backend)
        log(f"P={p}: injected in {res['inject_s']:.2f} s")
        acq = agent.call(op="acquire", rounds=5)
        res["acquire_lease_s"] = statistics.median(acq)
        res["floor_s"] = kernel_floor(backend, p)
        log(f"P={p}: acquire {res['acquire_lease_s'] * 1000:.0f} ms, floor "
            f"{res['floor_s'] * 1000:.0f} ms")  # fmt: skip

        kernel = Kernel(host.netns, "flannel.1" if backend == "vxlan" else None)
        t0 = time.monotonic()
        lab.start_daemon(name)
        assert host.state.daemon is not None
        pid = host.state.daemon.pid
        t_env = wait_for(lambda: host.subnet_env() is not None, 60, 0.005)
        if t_env is None:
            raise RuntimeError(f"no subnet.env after 60 s:\n{lab.logs(name)[-3000:]}")
        res["daemon_start_to_subnet_env_s"] = t_env - t0
        t_routes = wait_for(lambda: kernel.route_count() >= p, 300, 0.01)
        if t_routes is None:
            raise RuntimeError(f"routes incomplete after 300 s:\n{lab.logs(name)[-3000:]}")
        t_all = t_routes
        if backend == "vxlan":
            t_ent = wait_for(lambda: len(kernel.neighs()) >= p and len(kernel.fdbs()) >= p,
                             120, 0.05)  # fmt: skip
            if t_ent is None:
                raise RuntimeError("vxlan FDB/neighbour entries incomplete after 120 s")
            t_all = max(t_routes, t_ent)
        res["daemon_iface_to_lease_log_s"] = log_delta(
            lab.logs(name), "using interface", "acquired lease"
        )
        res["sync_s"] = t_all - t_env
        res["sync_over_floor"] = res["sync_s"] / res["floor_s"]
        res["daemon_start_to_all_s"] = t_all - t0
        res["cpu_to_sync_s"] = proc_cpu(pid)
        res["rss_after_sync_mb"] = proc_rss_mb(pid)
        log(f"P={p}: sync {res['sync_s'] * 1000:.0f} ms after subnet.env")

        # The first reconcile (one period after start) re-reads every route just written;
        # idle CPU is measured after it, in steady state, and the window before it apart.
        time.sleep(0.5)
        c0, w0 = proc_cpu(pid), time.monotonic()
        time.sleep(max(0.0, t0 + args.reconcile_interval + 1.5 - time.monotonic()))
        res["cpu_until_first_reconcile_done_pct"] = (
            100 * (proc_cpu(pid) - c0) / (time.monotonic() - w0)
        )
        c0, w0 = proc_cpu(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        res["idle_cpu_pct"] = 100 * (proc_cpu(pid) - c0) / (time.monotonic() - w0)
        log(f"P={p}: idle cpu {res['idle_cpu_pct']:.2f} % (before the first reconcile: "
            f"{res['cpu_until_first_reconcile_done_pct']:.2f} %)")  # fmt: skip

        # Churn: half adds of new peers, half deletes of random existing ones.
        n_ops = int(args.churn_rate * args.churn_seconds)
        rng = random.Random(p)
        adds = list(range(p, p + (n_ops + 1) // 2))
        dels = rng.sample(range(p), min(p, n_ops // 2))
        monitor = RouteMonitor(host.netns)
        c0 = proc_cpu(pid)
        ops = agent.call(op="churn", adds=adds, dels=dels, rate=args.churn_rate,
                         backend=backend)  # fmt: skip
        churn_wall = ops[-1][2] - ops[0][2] if ops else 0.0
        time.sleep(1.0)
        monitor.stop()
        res["churn_ops"] = len(ops)
        res["churn_rate_achieved"] = len(ops) / churn_wall if churn_wall else 0.0
        res["churn_cpu_pct"] = 100 * (proc_cpu(pid) - c0) / (churn_wall + 1.0)
        lat, unseen = monitor.latencies(ops)
        t_first = ops[0][2] if ops else 0.0
        res["slow_changes"] = [  # [s into churn, op, ms to route, ms to etcd ack]
            [round(sent - t_first, 3), kind, round(1000 * x, 1), round(1000 * (ack - sent), 1)]
            for (kind, _i, sent, ack), x in zip(ops, monitor.per_op, strict=True)
            if x is not None and x > 0.1
        ]
        lat.sort()
        res["change_latency_ms"] = {
            "p50": 1000 * lat[len(lat) // 2] if lat else None,
            "p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            "max": 1000 * lat[-1] if lat else None,
            "over_100ms": sum(1 for x in lat if x > 0.1),
            "not_seen": unseen,
        }
        # Final state against etcd (own lease excluded).
        keys = agent.call(op="list")
        own = host.subnet
        want_dsts = set()
        want_fdb = set()
        for key, value in keys:
            a, _, b = key.rsplit("/", 1)[1].partition("-")
            dst = f"{a}/{b}"
            if dst == own:
                continue
            want_dsts.add(dst)
            doc = json.loads(value)
            if backend == "vxlan":
                want_fdb.add(f"{doc['BackendData']['VtepMAC']}|{doc['PublicIP']}")
        want_neigh = {d.split("/")[0] for d in want_dsts}

        def diff() -> dict[str, int]:
            have = kernel.route_dsts()
            out = {"missing_routes": len(want_dsts - have), "stale_routes": len(have - want_dsts)}
            if backend == "vxlan":
                neighs, fdbs = kernel.neighs(), kernel.fdbs()
                out["missing_neigh"] = len(want_neigh - neighs)
                out["stale_neigh"] = len(neighs - want_neigh)
                out["missing_fdb"] = len(want_fdb - fdbs)
                out["stale_fdb"] = len(fdbs - want_fdb)
            return out

        final = diff()
        res.update({f"final_{k}": v for k, v in final.items()})
        # Not clean 1 s after the last change: backlog or loss? Keep checking for 60 s
        # (the reconcile loop may repair too). "ok" = clean at the first check.
        res["settle"] = "ok"
        if any(final.values()):
            t_last = ops[-1][3]
            t_ok = wait_for(lambda: not any(diff().values()), 60, 0.25)
            res["settle"] = "never" if t_ok is None else f"{t_ok - t_last:.1f}s"
            res["unsettled_after_60s"] = diff() if t_ok is None else {}
        res["rss_end_mb"] = proc_rss_mb(pid)
        res["rss_peak_mb"] = proc_rss_mb(pid, "VmHWM")
        log(f"P={p}: churn done, missing {res['final_missing_routes']} stale "
            f"{res['final_stale_routes']}")  # fmt: skip
    finally:
        if kernel is not None:
            kernel.close()
        if agent is not None:
            agent.close()
        lab.down()
    return res


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'backend':<8}{'peers':>7}{'lease ms':>10}{'daemon':>7}{'sync ms':>9}{'floor ms':>10}"
            f"{'x floor':>8}{'start->all':>11}{'cpu s':>7}{'rss MB':>8}{'idle %':>8}"
            f"{'chg p50':>8}{'p99':>6}{'max':>6}{'>100ms':>7}{'unseen':>7}{'miss':>5}"
            f"{'stale':>6}{'settle':>8}")  # fmt: skip
    rows = [head, "-" * len(head)]
    for r in results:
        lat = r["change_latency_ms"]
        miss = r["final_missing_routes"] + r.get("final_missing_neigh", 0) + r.get(
            "final_missing_fdb", 0)  # fmt: skip
        stale = r["final_stale_routes"] + r.get("final_stale_neigh", 0) + r.get(
            "final_stale_fdb", 0)  # fmt: skip

        conv = r["settle"]
        dlease = r["daemon_iface_to_lease_log_s"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        rows.append(
            f"{r['backend']:<8}{r['peers']:>7}{1000 * r['acquire_lease_s']:>10.0f}"
            f"{ms(dlease if dlease is None else 1000 * dlease):>7}"
            f"{1000 * r['sync_s']:>9.0f}{1000 * r['floor_s']:>10.0f}{r['sync_over_floor']:>8.2f}"
            f"{r['daemon_start_to_all_s']:>10.2f}s{r['cpu_to_sync_s']:>7.2f}"
            f"{r['rss_after_sync_mb']:>8.1f}{r['idle_cpu_pct']:>8.2f}{ms(lat['p50']):>8}"
            f"{ms(lat['p99']):>6}{ms(lat['max']):>6}{lat['over_100ms']:>7}{lat['not_seen']:>7}"
            f"{miss:>5}{stale:>6}{conv:>8}"
        )
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        import asyncio

        asyncio.run(_agent(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", default="1000,5000,10000", help="comma-separated P values")
    ap.add_argument("--backend", default="host-gw", choices=["host-gw", "vxlan"])
    ap.add_argument("--churn-rate", type=float, default=100.0, help="lease changes per second")
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument(
        "--idle-seconds", type=float, default=20.0,
        help="idle CPU window; a whole number of reconcile periods is fairest",
    )  # fmt: skip
    ap.add_argument(
        "--reconcile-interval", type=float, default=10.0,
        help="Backend.ReconcileInterval given to the daemon (flanneld default 10 s)",
    )  # fmt: skip
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    try:
        peers = [int(x) for x in args.peers.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--peers must be comma-separated integers, got {args.peers!r}")
    if any(not 1 <= p <= 60000 for p in peers):
        ap.error(f"--peers values must be 1..60000 (fake IPs are 198.19.0.0/16), got {peers}")
    if args.churn_rate <= 0 or args.churn_seconds <= 0:
        ap.error("--churn-rate and --churn-seconds must be > 0")
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (network namespaces): run it as root")

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    results = [run_one(p, args, log) for p in peers]
    print(table(results))
    doc = json.dumps(results, indent=2)
    print(doc)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(doc + "\n")


if __name__ == "__main__":
    main()
