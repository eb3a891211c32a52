"""External interface selection, in network namespaces built with veth pairs.

Layout of the shared namespace (peers ``*p`` are up, unaddressed):
  ve0  mtu 1400  198.18.0.2/24, 198.18.9.9/24, 2001:db8::2/64   default routes (v4, v6)
  ve1  mtu 1500  169.254.7.7/16 (link-local only; IPv6 disabled)
  ve2  mtu 1450  198.19.1.2/24, 198.19.200.128/24               route 198.19.64.0/18 via .1.1
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Any

import pytest

from flannel.config import ConfigError, NetworkConfig, parse_config
from flannel.iface import (
    InterfaceError,
    check_network_overlap,
    interface_addresses,
    list_links,
    lookup_ext_iface,
)
from flannel.testing.netns import Netns

pytestmark = pytest.mark.timeout(60)


def veth(ns: Netns, name: str, mtu: int, *addrs: str) -> None:
    ns.sh(f"ip link add {name} type veth peer name {name}p && ip link set {name} mtu {mtu}")
    for addr in addrs:
        family = "-6" if ":" in addr else "-4"
        extra = " nodad" if ":" in addr else ""
        ns.sh(f"ip {family} addr add {addr} dev {name}{extra}")
    ns.sh(f"ip link set {name}p up && ip link set {name} up")


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    ns = Netns("iface")
    try:
        veth(ns, "ve0", 1400, "198.18.0.2/24", "198.18.9.9/24", "2001:db8::2/64")
        veth(ns, "ve1", 1500, "169.254.7.7/16")
        ns.sh("sysctl -qw net.ipv6.conf.ve1.disable_ipv6=1")
        veth(ns, "ve2", 1450, "198.19.1.2/24", "198.19.200.128/24")
        ns.sh("ip route add default via 198.18.0.1 dev ve0")
        ns.sh("ip -6 route add default via 2001:db8::1 dev ve0")
        ns.sh("ip route add 198.19.64.0/18 via 198.19.1.1 dev ve2")
        yield ns.name
    finally:
        ns.delete()


def lookup(lab: str, **kw: Any) -> Any:
    return lookup_ext_iface(netns=lab, **kw)


def test_default_route_interface(lab: str) -> None:
    ext = lookup(lab)
    assert (ext.name, ext.mtu) == ("ve0", 1400)
    assert ext.iface_addr == ext.ext_addr == IPv4Address("198.18.0.2")  # first address
    assert ext.iface_v6_addr is None and ext.ext_v6_addr is None
    assert ext.index == next(link.index for link in list_links(lab) if link.name == "ve0")


async def test_runs_in_a_worker_thread_under_asyncio(lab: str) -> None:
    ext = await asyncio.to_thread(lookup_ext_iface, netns=lab, ifaces=["ve2"])
    assert ext.name == "ve2"


def test_by_name(lab: str) -> None:
    ext = lookup(lab, ifaces=["ve2"])
    assert (ext.name, ext.mtu, ext.iface_addr) == ("ve2", 1450, IPv4Address("198.19.1.2"))


def test_by_ip_uses_that_address(lab: str) -> None:
    ext = lookup(lab, ifaces=["198.19.200.128"])
    assert ext.name == "ve2"
    assert ext.iface_addr == ext.ext_addr == IPv4Address("198.19.200.128")


def test_first_matching_iface_wins(lab: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flannel.iface"):
        ext = lookup(lab, ifaces=["nosuch0", "198.18.77.77", "ve2", "ve0"])
    assert ext.name == "ve2"
    assert "nosuch0" in caplog.text and "198.18.77.77" in caplog.text


def test_regex_matches_addresses_first(lab: str) -> None:
    ext = lookup(lab, iface_regexes=[r"198\.19\.200\.\d+"])
    assert (ext.name, ext.iface_addr) == ("ve2", IPv4Address("198.19.200.128"))
    # "ve" would match every name, but an address match ("9.9") comes first.
    ext = lookup(lab, iface_regexes=[r"9\.9$"])
    assert (ext.name, ext.iface_addr) == ("ve0", IPv4Address("198.18.9.9"))


def test_regex_on_name_takes_first_address(lab: str) -> None:
    ext = lookup(lab, iface_regexes=["^nomatch$", "ve[2-9]$"])
    assert (ext.name, ext.iface_addr) == ("ve2", IPv4Address("198.19.1.2"))


def test_iface_tried_before_regex(lab: str) -> None:
    assert lookup(lab, ifaces=["ve2"], iface_regexes=["ve0$"]).name == "ve2"
    assert lookup(lab, ifaces=["gone"], iface_regexes=["ve0$"]).name == "ve0"


def test_can_reach_uses_route_and_source(lab: str) -> None:
    ext = lookup(lab, iface_can_reach="198.19.77.5")
    assert (ext.name, ext.iface_addr) == ("ve2", IPv4Address("198.19.1.2"))
    # Through the default route when nothing more specific exists.
    assert lookup(lab, iface_can_reach="198.18.200.1").name == "ve0"


def test_can_reach_is_last_resort(lab: str) -> None:
    assert lookup(lab, ifaces=["ve0"], iface_can_reach="198.19.77.5").name == "ve0"
    assert lookup(lab, ifaces=["nope"], iface_can_reach="198.19.77.5").name == "ve2"


def test_link_local_only_interface(lab: str) -> None:
    ext = lookup(lab, ifaces=["ve1"])
    assert (ext.name, ext.mtu, ext.iface_addr) == ("ve1", 1500, IPv4Address("169.254.7.7"))


def test_nothing_matches_is_one_line_error(lab: str) -> None:
    with pytest.raises(InterfaceError) as info:
        lookup(lab, ifaces=["eth9", "198.18.50.50"], iface_regexes=["^wlan"])
    message = str(info.value)
    assert "\n" not in message
    for part in ("--iface eth9", "--iface 198.18.50.50", "--iface-regex ^wlan", "ve0 [198.18.0.2"):
        assert part in message


def test_interface_without_needed_address(lab: str) -> None:
    with pytest.raises(InterfaceError, match="ve1 has no IPv6 address"):
        lookup(lab, ifaces=["ve1"], ipv6=True)
    with pytest.raises(InterfaceError, match="lo has no IPv4 address"):
        lookup(lab, ifaces=["lo"])


def test_public_ip_overrides(lab: str) -> None:
    ext = lookup(lab, ifaces=["ve0"], public_ip="198.18.100.1")
    assert ext.iface_addr == IPv4Address("198.18.0.2")
    assert ext.ext_addr == IPv4Address("198.18.100.1")
    ext = lookup(lab, ifaces=["ve0"], ipv6=True, public_ipv6="2001:db8:99::1")
    assert ext.iface_v6_addr == IPv6Address("2001:db8::2")
    assert ext.ext_v6_addr == IPv6Address("2001:db8:99::1")


def test_local_public_ip_selects_its_interface(lab: str) -> None:
    # flanneld v0.20: without interface flags, --public-ip is looked up as a local address.
    ext = lookup(lab, public_ip="198.19.200.128")
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("ve2", *[IPv4Address("198.19.200.128")] * 2)


def test_nat_public_ip_falls_back_to_default_route(lab: str) -> None:
    ext = lookup(lab, public_ip="198.18.222.1")
    assert ext.name == "ve0"
    assert (ext.iface_addr, ext.ext_addr) == (
        IPv4Address("198.18.0.2"),
        IPv4Address("198.18.222.1"),
    )


def test_dual_stack_default_route(lab: str) -> None:
    ext = lookup(lab, ipv6=True)
    assert ext.name == "ve0"
    assert ext.iface_addr == IPv4Address("198.18.0.2")
    assert ext.iface_v6_addr == ext.ext_v6_addr == IPv6Address("2001:db8::2")  # not fe80::


def test_ipv6_only(lab: str) -> None:
    ext = lookup(lab, ipv4=False, ipv6=True)
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("ve0", None, None)
    assert ext.iface_v6_addr == IPv6Address("2001:db8::2")
    ext = lookup(lab, ipv4=False, ipv6=True, ifaces=["2001:db8::2"])
    assert (ext.name, ext.iface_v6_addr) == ("ve0", IPv6Address("2001:db8::2"))
    # Interfaces with only a link-local IPv6 address use it.
    ext = lookup(lab, ipv4=False, ipv6=True, ifaces=["ve2"])
    assert ext.iface_v6_addr is not None and ext.iface_v6_addr.is_link_local


def test_dual_stack_regex_needs_both_families(lab: str) -> None:
    ext = lookup(lab, ipv6=True, iface_regexes=[r"^(198\.18\.9\.9|2001:db8::2)$"])
    assert (ext.iface_addr, ext.iface_v6_addr) == (
        IPv4Address("198.18.9.9"),
        IPv6Address("2001:db8::2"),
    )
    # v4-only match on ve2: not an address match in dual stack, so the name decides.
    ext = lookup(lab, ipv6=True, iface_regexes=[r"198\.19\.200|ve0$"])
    assert ext.name == "ve0"


def test_dual_stack_iface_ip_with_public_ipv6_on_other_interface(
    netns_factory: Callable[[str], Netns],
) -> None:
    ns = netns_factory("ifdual")
    veth(ns, "va", 1500, "198.18.0.2/24")
    veth(ns, "vb", 1500, "2001:db8::7/64")
    with pytest.raises(InterfaceError, match="--public-ipv6 2001:db8::7 is on vb"):
        lookup_ext_iface(netns=ns.name, ifaces=["198.18.0.2"], ipv6=True, public_ipv6="2001:db8::7")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"public_ip": "2001:db8::1"}, "--public-ip '2001:db8::1' is not an IPv4 address"),
        ({"public_ip": "nope"}, "--public-ip 'nope' is not an IPv4 address"),
        ({"public_ipv6": "198.18.0.1", "ipv6": True}, "--public-ipv6 '198.18.0.1' is not an IPv6"),
        ({"iface_regexes": ["ve(0"]}, "--iface-regex 've\\(0' is not a valid regular expression"),
        ({"iface_can_reach": "somehost"}, "--iface-can-reach 'somehost' is not an IP address"),
        ({"ipv4": False}, "neither IPv4 nor IPv6 is enabled"),
    ],
)
def test_bad_flag_values(lab: str, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InterfaceError, match=match) as info:
        lookup(lab, **kw)
    assert "no interface matches" not in str(info.value)  # reported as itself, at once


def test_no_default_route(netns_factory: Callable[[str], Netns]) -> None:
    ns = netns_factory("ifnodef")
    veth(ns, "va", 1500, "198.18.0.2/24")
    with pytest.raises(InterfaceError, match=r"no IPv4 default route.*--iface"):
        lookup_ext_iface(netns=ns.name)
    assert lookup_ext_iface(netns=ns.name, ifaces=["va"]).name == "va"


def test_dual_stack_default_routes_must_agree(netns_factory: Callable[[str], Netns]) -> None:
    ns = netns_factory("ifsplit")
    veth(ns, "va", 1500, "198.18.0.2/24")
    veth(ns, "vb", 1500, "2001:db8::2/64")
    ns.sh("ip route add default via 198.18.0.1 dev va")
    ns.sh("ip -6 route add default via 2001:db8::1 dev vb")
    with pytest.raises(InterfaceError, match="IPv6 default route uses vb but the IPv4 one uses va"):
        lookup_ext_iface(netns=ns.name, ipv6=True)
    assert lookup_ext_iface(netns=ns.name, ipv4=False, ipv6=True).name == "vb"


def test_multipath_default_route_uses_first_hop(netns_factory: Callable[[str], Netns]) -> None:
    ns = netns_factory("ifmp")
    veth(ns, "va", 1500, "198.18.0.2/24")
    veth(ns, "vb", 1500, "198.18.1.2/24")
    ns.sh("ip route add default nexthop via 198.18.1.1 dev vb nexthop via 198.18.0.1 dev va")
    assert lookup_ext_iface(netns=ns.name).name == "vb"


def test_mtu_follows_the_link(netns_factory: Callable[[str], Netns]) -> None:
    ns = netns_factory("ifmtu")
    veth(ns, "va", 9000, "198.18.0.2/24")
    assert lookup_ext_iface(netns=ns.name, ifaces=["va"]).mtu == 9000
    ns.sh("ip link set va mtu 1280")
    assert lookup_ext_iface(netns=ns.name, ifaces=["va"]).mtu == 1280


# --- the underlay overlap check -----------------------------------------------------------


def cfg(**keys: Any) -> NetworkConfig:
    keys.setdefault("Backend", {"Type": "vxlan"})
    return parse_config(json.dumps(keys))


def test_overlap_with_interface_address_is_refused(lab: str) -> None:
    index = next(link.index for link in list_links(lab) if link.name == "ve0")
    addrs = interface_addresses(index, netns=lab)
    assert IPv4Interface("198.18.0.2/24") in addrs and IPv6Interface("2001:db8::2/64") in addrs
    with pytest.raises(ConfigError) as info:
        check_network_overlap(cfg(Network="198.18.0.0/16"), addrs, "ve0")
    message = str(info.value)
    assert "\n" not in message
    assert "Network 198.18.0.0/16 contains 198.18.0.2/24 of the underlay interface ve0" in message
    check_network_overlap(cfg(Network="10.244.0.0/16"), addrs, "ve0")


def test_overlap_checks() -> None:
    addrs: list[IPv4Interface | IPv6Interface] = [
        IPv4Interface("10.0.0.5/8"), IPv6Interface("fd00:1::5/64"),
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"Network 10\.0\.0\.0/24 contains 10\.0\.0\.5/8"):
        check_network_overlap(cfg(Network="10.0.0.0/24"), addrs)
    with pytest.raises(ConfigError, match=r"Network 10\.0\.0\.0/16 contains"):
        check_network_overlap(cfg(Network="10.244.0.0/16", Networks=["10.0.0.0/16"]), addrs)
    with pytest.raises(ConfigError, match="IPv6Network fd00::/16 contains fd00:1::5/64"):
        check_network_overlap(
            cfg(Network="172.16.0.0/16", EnableIPv6=True, IPv6Network="fd00::/16"), addrs
        )
    # IPv6 not enabled: the IPv6 address does not matter.
    check_network_overlap(cfg(Network="172.16.0.0/16"), addrs)


def test_pod_network_inside_underlay_subnet_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flannel.iface"):
        check_network_overlap(cfg(Network="10.244.0.0/16"), [IPv4Interface("10.0.0.5/8")], "eth0")
    assert "10.244.0.0/16 lies inside 10.0.0.0/8 of the underlay interface eth0" in caplog.text


def test_interface_addresses_unknown_index(lab: str) -> None:
    with pytest.raises(InterfaceError, match="interface index 9999 does not exist"):
        interface_addresses(9999, netns=lab)


def test_zero_mtu_is_refused() -> None:
    # No real interface reports MTU 0 (veth's minimum is 68), so check the rule directly.
    from flannel.iface import LinkInfo, _complete, _Match

    link = LinkInfo(index=7, name="odd0", mtu=0, v4=(IPv4Interface("198.18.0.2/24"),))
    with pytest.raises(InterfaceError, match="interface odd0 reports MTU 0"):
        _complete(_Match(link), (True, False))
