"""How the etcd lease store scales: acquire and list with N leases already in etcd.

Not a test: prints numbers. Starts its own etcd on a free loopback port (stopped by PID).

    python bench/lease_scale.py [--leases 10000] [--rounds 5]

Targets: acquiring our own lease with 10,000 leases present in < 0.2 s. flanneld v0.20.2
makes one TimeToLive RPC per key on every listing; this store reads all keys in one range.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from ipaddress import IPv4Address, IPv4Network

from aetcd import rpc

from flannel.config import parse_config
from flannel.etcd import EtcdClientConfig
from flannel.etcd_manager import EtcdSubnetManager
from flannel.lease import LeaseAttrs, encode_attrs
from flannel.testing.etcd import EtcdServer

CONFIG = b'{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}'


async def populate(mgr: EtcdSubnetManager, count: int) -> None:
    """Write ``count`` vxlan leases (10.0.1.0/24 upwards) in transactions of 100 puts."""
    client, _ = await mgr.conn.client()
    lease_id = await mgr.registry.grant(3600)
    base = int(IPv4Address("10.0.1.0"))
    for start in range(0, count, 100):
        ops = []
        for i in range(start, min(count, start + 100)):
            subnet = IPv4Network((base + 256 * i, 24))
            attrs = LeaseAttrs(
                public_ip=IPv4Address("198.18.0.0") + i + 1000,
                backend_type="vxlan",
                backend_data={
                    "VNI": 1,
                    "VtepMAC": f"4e:8a:0b:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                },
            )
            put = rpc.PutRequest(
                key=mgr.registry.lease_key(subnet, None), value=encode_attrs(attrs), lease=lease_id
            )
            ops.append(rpc.RequestOp(request_put=put))
        await client.kvstub.Txn(rpc.TxnRequest(success=ops), timeout=30, metadata=client.metadata)


def report(name: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"{name:<42} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f} ms   "
        f"max {max(ms):7.1f} ms   (n={len(ms)})"
    )


async def main(leases: int, rounds: int) -> None:
    server = EtcdServer(extra_args=["--quota-backend-bytes=4294967296"])
    with server.running():
        mgr = EtcdSubnetManager(EtcdClientConfig(endpoints=(server.endpoint,)))
        async with mgr:
            await mgr.set_config(CONFIG)
            config = parse_config(CONFIG)
            t0 = time.perf_counter()
            await populate(mgr, leases)
            print(f"populated {leases} leases in {time.perf_counter() - t0:.2f} s")

            cold_list, warm_list, new_times, reuse_times, connect_times = [], [], [], [], []
            for r in range(rounds):
                # Every round is a fresh manager, as a daemon (re)starting: no caches.
                fresh = EtcdSubnetManager(EtcdClientConfig(endpoints=(server.endpoint,)))
                t = time.perf_counter()
                await fresh.connect()
                connect_times.append(time.perf_counter() - t)
                me = LeaseAttrs(public_ip=IPv4Address("198.19.0.0") + r, backend_type="vxlan")
                t = time.perf_counter()
                lease = await fresh.acquire_lease(config, me)
                new_times.append(time.perf_counter() - t)
                await fresh.close()

                again_mgr = EtcdSubnetManager(EtcdClientConfig(endpoints=(server.endpoint,)))
                await again_mgr.connect()
                t = time.perf_counter()
                again = await again_mgr.acquire_lease(config, me)  # restart: reuse by PublicIP
                reuse_times.append(time.perf_counter() - t)
                assert again.subnet == lease.subnet

                t = time.perf_counter()
                got = await again_mgr.list_leases()
                cold_list.append(time.perf_counter() - t)
                assert len(got) >= leases
                t = time.perf_counter()
                await again_mgr.list_leases()
                warm_list.append(time.perf_counter() - t)
                await again_mgr.close()

            print(f"etcd {server.endpoint}, {leases} leases present")
            report("connect (fresh manager)", connect_times)
            report("acquire_lease, new host (scan+pick+txn)", new_times)
            report("acquire_lease, restart (scan+reuse CAS)", reuse_times)
            report("list_leases, first (read + decode all)", cold_list)
            report("list_leases, again (decode cache)", warm_list)
            target = statistics.median(new_times + reuse_times)
            verdict = "OK" if target < 0.2 else "ABOVE TARGET"
            print(f"target: acquire < 200 ms -> median {target * 1000:.1f} ms: {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.leases, args.rounds))
