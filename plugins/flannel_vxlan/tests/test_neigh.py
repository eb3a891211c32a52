"""flannel.netlink.neigh (core's shared neighbour/FDB helper) against a real kernel."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from ipaddress import ip_address

import pytest
from vxhelpers import in_netns, make_hosts

from flannel.netlink.neigh import FdbEntry, NeighEntry, NeighTable, parse_mac
from flannel.testing.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]


def test_parse_mac_rejects_garbage() -> None:
    assert parse_mac("0A:00:00:00:00:01") == bytes([10, 0, 0, 0, 0, 1])
    for bad in ("0a:00:00:00:00", "0a-00-00-00-00-01", "zz:00:00:00:00:01"):
        with pytest.raises(ValueError, match="not a MAC address"):
            parse_mac(bad)


def test_batched_writes_dump_reconcile_and_per_entry_errors(
    netns_factory: Callable[[str], Netns],
) -> None:
    a, _b = make_hosts(netns_factory)
    a.ns.sh("ip link add flannel.1 type vxlan id 1 local 198.18.0.1 dev ext0 dstport 8472 "
            "nolearning && ip link set flannel.1 up")  # fmt: skip
    idx = a.ifindex("flannel.1")
    wanted: list[NeighEntry | FdbEntry] = []
    for i in range(3000):
        mac = f"0a:00:00:00:{i // 256:02x}:{i % 256:02x}"
        wanted.append(NeighEntry(idx, ip_address(f"10.{100 + i // 256}.{i % 256}.0"), mac))
        wanted.append(FdbEntry(idx, mac, ip_address(f"198.18.{1 + i // 256}.{i % 256}")))

    async def scenario() -> None:
        table = NeighTable()
        try:
            assert table.replace(wanted) == []
            assert len(table.dump_neigh(idx)) == 3000 and len(table.dump_fdb(idx)) == 3000
            noop = table.reconcile(idx, socket.AF_INET, wanted)
            assert (noop.added, noop.removed, noop.errors) == ([], [], [])
            a.ns.sh(
                "ip neigh del 10.100.5.0 dev flannel.1 && "
                "bridge fdb del 0a:00:00:00:00:07 dev flannel.1 dst 198.18.1.7 self"
            )
            result = table.reconcile(idx, socket.AF_INET, wanted[:-2])
            assert {str(e) for e in result.added} == {str(wanted[10]), str(wanted[15])}
            assert {str(e) for e in result.removed} == {str(wanted[-2]), str(wanted[-1])}
            errors = table.replace(
                [NeighEntry(9999, ip_address("10.1.1.0"), "0a:00:00:00:00:01"),
                 NeighEntry(idx, ip_address("10.1.1.0"), "0a:00:00:00:00:01")]
            )  # fmt: skip
            assert [(e.entry.ifindex, e.errno) for e in errors] == [(9999, errno.ENODEV)]  # type: ignore[attr-defined]
            gone = NeighEntry(idx, ip_address("10.9.9.0"), "0a:00:00:00:00:01")
            assert table.delete([gone]) == []
            assert [e.errno for e in table.delete([gone], missing_ok=False)] == [errno.ENOENT]
        finally:
            table.close()

    in_netns(a.ns, scenario)
    assert "10.100.5.0 lladdr 0a:00:00:00:00:05 PERMANENT" in a.ns.sh(
        "ip neigh show 10.100.5.0 dev flannel.1"
    )
