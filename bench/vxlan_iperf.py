"""iperf3 pod-to-pod over vxlan vs host-to-host over the underlay, in the same lab run.

Usage (root; needs etcd, iperf3, iproute2): ``python bench/vxlan_iperf.py [--seconds 5]``.
Builds a 2-host vxlan lab in namespaces, runs TCP iperf3 h1-pod -> h2-pod (through
flannel.1) and h1 -> h2 on the underlay (eth0), prints both rates and their ratio, and
tears the lab down. Not a test: numbers only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from typing import Any

from flannel.lab import Lab
from flannel.testing.netns import run_tag

PORT = 5201


def iperf(lab: Lab, server_ns: str, client_ns: str, target: str, seconds: int) -> dict[str, Any]:
    """One TCP run; returns iperf3's JSON result."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(50):  # the server needs a moment to listen
            done = subprocess.run(
                ["ip", "netns", "exec", client_ns, "iperf3", "-c", target, "-p", str(PORT),
                 "-t", str(seconds), "-J"],
                capture_output=True, text=True,
            )  # fmt: skip
            result: dict[str, Any] = json.loads(done.stdout or "{}")
            if done.returncode == 0 and "sum_received" in result.get("end", {}):
                return result
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 to {target} failed: {done.stdout[-500:]} {done.stderr}")
    finally:
        if server.poll() is None:
            server.terminate()  # our own iperf3 server, by PID
        server.wait()


def gbits(result: dict[str, Any]) -> float:
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run")
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        print("iperf3 not found: apt-get install iperf3", file=sys.stderr)
        return 1
    config = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    with Lab(name="vxperf", hosts=2, backend="vxlan", config=config, tag=run_tag()) as lab:
        lab.wait_ready(timeout=90)
        h1, h2 = lab.host("h1"), lab.host("h2")
        assert h2.pod_ip is not None, "h2 has no pod"
        if not lab.ping("h1", "h2"):
            print("pod-to-pod ping failed; no numbers", file=sys.stderr)
            return 1
        mtu = (h1.subnet_env() or {}).get("FLANNEL_MTU", "?")
        over_vxlan = gbits(iperf(lab, h2.pod_netns, h1.pod_netns, h2.pod_ip, args.seconds))
        underlay = gbits(iperf(lab, h2.netns, h1.netns, h2.address, args.seconds))
    ratio = over_vxlan / underlay if underlay else float("nan")
    print(f"iperf3 TCP, {args.seconds} s each, same run (pod MTU {mtu}, underlay MTU 1500)")
    print(f"  pod-to-pod over vxlan : {over_vxlan:7.2f} Gbit/s")
    print(f"  host-to-host underlay : {underlay:7.2f} Gbit/s")
    print(f"  ratio vxlan/underlay  : {ratio:7.2f}")
    print(json.dumps({"vxlan_gbps": round(over_vxlan, 3), "underlay_gbps": round(underlay, 3),
                      "ratio": round(ratio, 3), "seconds": args.seconds}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
