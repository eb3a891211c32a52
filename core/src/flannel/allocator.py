"""Subnet allocation: which subnets are free, and a random pick among them.

flanneld's rule (v0.7-v0.20): walk from SubnetMin in steps of one subnet while the address
is <= SubnetMax, keep the first 100 subnets that overlap no existing lease or reservation
(of any prefix length), and pick one uniformly at random. Random picks keep hosts that start
together from colliding on the same key; the creation transaction settles the rest.

Everything here is pure. Taken subnets are merged into sorted intervals once, and the walk
jumps over each taken interval, so the cost is O(L log L + limit) for L leases however
large the range is.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from flannel.config import NetworkConfig

if TYPE_CHECKING:
    from flannel.lease import Lease

__all__ = [
    "CANDIDATE_LIMIT",
    "free_candidates",
    "free_ipv6_candidates",
    "pick_ipv6_subnet",
    "pick_subnet",
    "taken_subnets",
]

CANDIDATE_LIMIT = 100
"""How many free subnets flanneld collects before picking one at random."""

_SYSTEM_RNG = random.SystemRandom()


def _merged_intervals(taken: Iterable[IPv4Network | IPv6Network | None]) -> list[list[int]]:
    """Sorted, non-overlapping ``[first, last]`` address intervals covering ``taken``."""
    spans = sorted(
        (start, start + (1 << (net.max_prefixlen - net.prefixlen)) - 1)
        for net in taken
        if net is not None
        for start in (int(net.network_address),)
    )
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _free_starts(first: int, last: int, size: int, taken: list[list[int]], limit: int) -> list[int]:
    """Start addresses ``first + k*size <= last`` whose subnet misses every taken interval."""
    found: list[int] = []
    i = 0
    start = first
    while start <= last and len(found) < limit:
        while i < len(taken) and taken[i][1] < start:
            i += 1
        if i < len(taken) and taken[i][0] < start + size:
            # Overlap: jump to the first subnet boundary after this taken interval.
            after = taken[i][1] + 1
            start = first + -(-(after - first) // size) * size
            continue
        found.append(start)
        start += size
    return found


def free_candidates(
    config: NetworkConfig,
    taken: Iterable[IPv4Network | None],
    limit: int = CANDIDATE_LIMIT,
) -> list[IPv4Network]:
    """The first ``limit`` free IPv4 subnets in [SubnetMin, SubnetMax], in address order.

    A subnet is free if it overlaps none of ``taken`` (leases and reservations; any prefix
    length; ``None`` entries are ignored). Empty when IPv4 is disabled or all is taken.
    """
    if not config.enable_ipv4 or config.subnet_min is None or config.subnet_max is None:
        return []
    starts = _free_starts(
        int(config.subnet_min), int(config.subnet_max), config.subnet_size,
        _merged_intervals(taken), limit,
    )  # fmt: skip
    return [IPv4Network((start, config.subnet_len)) for start in starts]


def free_ipv6_candidates(
    config: NetworkConfig,
    taken: Iterable[IPv6Network | None],
    limit: int = CANDIDATE_LIMIT,
) -> list[IPv6Network]:
    """The IPv6 counterpart of :func:`free_candidates`."""
    if not config.enable_ipv6 or config.ipv6_subnet_min is None or config.ipv6_subnet_max is None:
        return []
    starts = _free_starts(
        int(config.ipv6_subnet_min), int(config.ipv6_subnet_max), config.ipv6_subnet_size,
        _merged_intervals(taken), limit,
    )  # fmt: skip
    return [IPv6Network((start, config.ipv6_subnet_len)) for start in starts]


def _choose(candidates: Sequence[IPv4Network | IPv6Network], rng: random.Random | None) -> int:
    return (rng or _SYSTEM_RNG).randrange(len(candidates))


def pick_subnet(
    config: NetworkConfig,
    taken: Iterable[IPv4Network | None],
    rng: random.Random | None = None,
) -> IPv4Network | None:
    """A uniformly random pick among :func:`free_candidates`; None when the range is full
    (or IPv4 is disabled). Pass ``rng`` for reproducible picks."""
    candidates = free_candidates(config, taken)
    return candidates[_choose(candidates, rng)] if candidates else None


def pick_ipv6_subnet(
    config: NetworkConfig,
    taken: Iterable[IPv6Network | None],
    rng: random.Random | None = None,
) -> IPv6Network | None:
    """The IPv6 counterpart of :func:`pick_subnet` (picked independently, as flanneld)."""
    candidates = free_ipv6_candidates(config, taken)
    return candidates[_choose(candidates, rng)] if candidates else None


def taken_subnets(leases: Iterable[Lease]) -> tuple[list[IPv4Network], list[IPv6Network]]:
    """The IPv4 and IPv6 subnets held by ``leases`` (reservations included)."""
    v4: list[IPv4Network] = []
    v6: list[IPv6Network] = []
    for lease in leases:
        if lease.subnet is not None:
            v4.append(lease.subnet)
        if lease.ipv6_subnet is not None:
            v6.append(lease.ipv6_subnet)
    return v4, v6
