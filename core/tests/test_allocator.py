"""Subnet allocation: flanneld's first-100-free walk and random pick, checked exhaustively."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flannel.allocator import (
    CANDIDATE_LIMIT,
    free_candidates,
    free_ipv6_candidates,
    pick_ipv6_subnet,
    pick_subnet,
    taken_subnets,
)
from flannel.config import NetworkConfig, parse_config
from flannel.lease import Lease


def cfg(**keys: Any) -> NetworkConfig:
    keys.setdefault("Backend", {"Type": "alloc"})
    return parse_config(json.dumps(keys))


def nets(*texts: str) -> list[IPv4Network]:
    return [IPv4Network(t) for t in texts]


UPSTREAM = cfg(Network="10.3.0.0/16", SubnetMin="10.3.1.0", SubnetMax="10.3.25.0")
UPSTREAM_LEASES = nets("10.3.1.0/24", "10.3.2.0/24", "10.3.4.0/24", "10.3.5.0/24", "10.3.31.0/24")


def test_upstream_lease_manager_range() -> None:
    free = free_candidates(UPSTREAM, UPSTREAM_LEASES)
    expected = [IPv4Network(f"10.3.{i}.0/24") for i in range(3, 26) if i not in (4, 5)]
    assert free == expected
    assert pick_subnet(UPSTREAM, UPSTREAM_LEASES, random.Random(1)) in expected


def test_overlap_with_any_prefix_length() -> None:
    c = cfg(Network="10.3.0.0/16")
    taken = nets("10.3.1.128/26", "10.3.2.0/23", "10.3.8.0/21", "10.3.16.7/32")
    free = free_candidates(c, taken, limit=5)
    # /26 blocks 10.3.1.0, /23 blocks 2-3, /21 blocks 8-15, /32 blocks 16.
    assert free == nets("10.3.4.0/24", "10.3.5.0/24", "10.3.6.0/24", "10.3.7.0/24", "10.3.17.0/24")


def test_single_addresses_at_subnet_edges_block_it() -> None:
    c = cfg(Network="10.3.0.0/16")
    assert free_candidates(c, nets("10.3.1.255/32", "10.3.2.0/32"), limit=1) == nets("10.3.3.0/24")


def test_supernet_reservation_blocks_everything() -> None:
    c = cfg(Network="10.3.0.0/16")
    assert free_candidates(c, nets("10.0.0.0/8")) == []
    assert pick_subnet(c, nets("10.0.0.0/8")) is None
    # Leases outside the network do not matter.
    assert len(free_candidates(c, nets("10.4.0.0/16", "192.168.0.0/16"))) == CANDIDATE_LIMIT


def test_limit_and_order() -> None:
    c = cfg(Network="10.0.0.0/8")
    free = free_candidates(c, [])
    assert len(free) == 100
    assert free[0] == IPv4Network("10.0.1.0/24") and free[-1] == IPv4Network("10.0.100.0/24")
    assert free_candidates(c, [], limit=3) == nets("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24")


def test_full_network_gives_none() -> None:
    c = cfg(Network="10.3.0.0/28")  # /30 subnets: 10.3.0.4, .8, .12 allocatable
    taken = nets("10.3.0.4/30", "10.3.0.8/30", "10.3.0.12/30")
    assert free_candidates(c, taken) == []
    assert pick_subnet(c, taken, random.Random(0)) is None
    assert pick_subnet(c, taken[:2]) == IPv4Network("10.3.0.12/30")


def test_ten_thousand_leases() -> None:
    c = cfg(Network="10.0.0.0/8")
    # Every other /24 of the first 20,000, plus the single gaps filled by /25s.
    taken = [IPv4Network((int(IPv4Address("10.0.1.0")) + i * 256, 24)) for i in range(10_000)]
    random.Random(3).shuffle(taken)
    free = free_candidates(c, taken)
    first = int(IPv4Address("10.0.1.0")) + 10_000 * 256
    assert free == [IPv4Network((first + i * 256, 24)) for i in range(100)]


def test_pick_is_uniform_over_candidates() -> None:
    c = cfg(Network="10.3.0.0/28")
    rng = random.Random(42)
    picks = {pick_subnet(c, [], rng) for _ in range(200)}
    assert picks == set(nets("10.3.0.4/30", "10.3.0.8/30", "10.3.0.12/30"))
    assert pick_subnet(c, []) in picks  # default system RNG


def test_ipv6() -> None:
    c = cfg(Network="10.3.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48")
    taken = [IPv6Network("fc00:0:0:1::/64"), IPv6Network("fc00:0:0:2::/63")]
    free = free_ipv6_candidates(c, taken, limit=2)
    assert free == [IPv6Network("fc00:0:0:4::/64"), IPv6Network("fc00:0:0:5::/64")]
    assert len(free_ipv6_candidates(c, taken)) == 100
    assert pick_ipv6_subnet(c, [IPv6Network("fc00::/47")]) is None
    pick = pick_ipv6_subnet(c, taken, random.Random(5))
    assert pick is not None and pick.prefixlen == 64 and pick not in taken


def test_disabled_family_has_no_candidates() -> None:
    only4 = cfg(Network="10.3.0.0/16")
    only6 = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48")
    assert free_ipv6_candidates(only4, []) == [] and pick_ipv6_subnet(only4, []) is None
    assert free_candidates(only6, []) == [] and pick_subnet(only6, []) is None


def test_taken_subnets_from_leases() -> None:
    v6 = IPv6Network("fc00:0:0:1::/64")
    leases = [Lease(IPv4Network("10.3.1.0/24")), Lease(None, ipv6_subnet=v6),
              Lease(IPv4Network("10.3.2.0/24"), ipv6_subnet=v6, expiration=None)]  # fmt: skip
    assert taken_subnets(leases) == (nets("10.3.1.0/24", "10.3.2.0/24"), [v6, v6])
    assert free_candidates(UPSTREAM, [None, *nets("10.3.1.0/24")], limit=1) == nets("10.3.2.0/24")


# --- properties against a brute-force reference ----------------------------------------


def brute_force(c: NetworkConfig, taken: list[IPv4Network]) -> list[IPv4Network]:
    assert c.subnet_min is not None and c.subnet_max is not None
    out = []
    start = int(c.subnet_min)
    while start <= int(c.subnet_max):
        candidate = IPv4Network((start, c.subnet_len))
        if not any(candidate.overlaps(t) for t in taken):
            out.append(candidate)
        start += c.subnet_size
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[NetworkConfig, list[IPv4Network]]:
    prefix = draw(st.integers(8, 28))
    length = draw(st.integers(prefix + 2, min(30, prefix + 10)))  # at most 1024 subnets
    base = draw(st.integers(0, (1 << 32) - 1)) >> (32 - prefix) << (32 - prefix)
    network = IPv4Network((base, prefix))
    count = 1 << (length - prefix)
    size = 1 << (32 - length)
    lo = draw(st.integers(0, count - 1))
    hi = draw(st.integers(lo, count - 1))
    c = cfg(
        Network=str(network), SubnetLen=length,
        SubnetMin=str(IPv4Address(base + lo * size)), SubnetMax=str(IPv4Address(base + hi * size)),
    )  # fmt: skip
    # Taken subnets start near subnet boundaries (edges are where off-by-ones hide), or
    # anywhere, with any prefix length from a supernet of the network to a single address.
    spot = st.tuples(
        st.integers(-1, count + 1),
        st.sampled_from([0, 1, size - 1, size // 2]) | st.integers(0, size - 1),
        st.sampled_from([32, length, length + 1]) | st.integers(max(0, prefix - 2), 32),
    )
    taken = [
        IPv4Network((max(0, min((1 << 32) - 1, base + k * size + delta)), plen), strict=False)
        for k, delta, plen in draw(st.lists(spot, max_size=40))
    ]
    return c, taken


@settings(max_examples=300, deadline=None, database=None)
@given(scenarios(), st.integers(1, 150), st.integers(0, 2**32))
def test_candidates_match_brute_force(
    scenario: tuple[NetworkConfig, list[IPv4Network]], limit: int, seed: int
) -> None:
    c, taken = scenario
    expected = brute_force(c, taken)
    free = free_candidates(c, taken, limit=limit)
    assert free == expected[:limit]
    for subnet in free:
        assert c.contains_subnet(subnet)  # in range, right prefix
        assert int(subnet.network_address) % c.subnet_size == 0  # aligned
        assert not any(subnet.overlaps(t) for t in taken)
    pick = pick_subnet(c, taken, random.Random(seed))
    if expected:
        assert pick in expected[:CANDIDATE_LIMIT]
    else:
        assert pick is None


@settings(max_examples=100, deadline=None, database=None)
@given(st.integers(50, 120), st.lists(st.tuples(st.integers(0, 2**16), st.integers(46, 128))))
def test_ipv6_pick_property(prefix: int, spots: list[tuple[int, int]]) -> None:
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network=f"fc00::/{prefix}",
            IPv6SubnetLen=min(126, prefix + 6))  # fmt: skip
    base = int(IPv6Network(f"fc00::/{prefix}").network_address)
    size = c.ipv6_subnet_size
    taken = [IPv6Network((base + off * size // 4, plen), strict=False) for off, plen in spots]
    free = free_ipv6_candidates(c, taken)
    for subnet in free:
        assert c.contains_ipv6_subnet(subnet)
        assert not any(subnet.overlaps(t) for t in taken)
    pick = pick_ipv6_subnet(c, taken, random.Random(1))
    assert (pick is None) == (not free)
    assert pick is None or pick in free
