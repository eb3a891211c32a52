"""Peer table: longest-prefix lookup, source set, updates; the C table and the Python one."""

from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel_udp.datapath import Forwarder, fastpath_available
from flannel_udp.pyforward import PyForwarder


def _c(tun: int, sock: int, addr: int) -> Forwarder:
    from flannel_udp._fastpath import Forwarder as CForwarder

    return CForwarder(tun, sock, addr)


FACTORIES: list[Callable[[int, int, int], Forwarder]] = [PyForwarder]
if fastpath_available():
    FACTORIES.append(_c)


@pytest.fixture(params=FACTORIES, ids=lambda f: "python" if f is PyForwarder else "c")
def fw(request: pytest.FixtureRequest) -> Forwarder:
    factory: Callable[[int, int, int], Forwarder] = request.param
    return factory(-1, -1, 0)  # never started: table only


def ip(text: str) -> int:
    return int(IPv4Address(text))


def test_lookup_finds_owner_and_misses_others(fw: Forwarder) -> None:
    fw.set_route(ip("10.244.5.0"), 24, ip("198.18.0.5"), 8285)
    assert fw.lookup(ip("10.244.5.77")) == (ip("198.18.0.5"), 8285)
    assert fw.lookup(ip("10.244.6.1")) is None
    assert fw.is_allowed_source(ip("198.18.0.5"))
    assert not fw.is_allowed_source(ip("198.18.0.6"))


def test_host_bits_are_masked(fw: Forwarder) -> None:
    fw.set_route(ip("10.244.5.9"), 24, ip("198.18.0.5"), 8285)
    assert fw.lookup(ip("10.244.5.1")) == (ip("198.18.0.5"), 8285)
    assert fw.del_route(ip("10.244.5.200"), 24)
    assert fw.route_count() == 0


def test_longest_prefix_wins(fw: Forwarder) -> None:
    fw.set_route(ip("10.0.0.0"), 8, ip("198.18.0.1"), 1)
    fw.set_route(ip("10.244.0.0"), 16, ip("198.18.0.2"), 2)
    fw.set_route(ip("10.244.7.0"), 24, ip("198.18.0.3"), 3)
    assert fw.lookup(ip("10.244.7.1")) == (ip("198.18.0.3"), 3)
    assert fw.lookup(ip("10.244.8.1")) == (ip("198.18.0.2"), 2)
    assert fw.lookup(ip("10.9.8.1")) == (ip("198.18.0.1"), 1)
    fw.del_route(ip("10.244.7.0"), 24)
    assert fw.lookup(ip("10.244.7.1")) == (ip("198.18.0.2"), 2)


def test_replace_moves_source_and_delete_forgets_it(fw: Forwarder) -> None:
    fw.set_route(ip("10.244.5.0"), 24, ip("198.18.0.5"), 8285)
    fw.set_route(ip("10.244.5.0"), 24, ip("198.18.0.9"), 8285)
    assert fw.route_count() == 1
    assert not fw.is_allowed_source(ip("198.18.0.5"))
    assert fw.is_allowed_source(ip("198.18.0.9"))
    assert fw.del_route(ip("10.244.5.0"), 24)
    assert not fw.del_route(ip("10.244.5.0"), 24)
    assert not fw.is_allowed_source(ip("198.18.0.9"))


def test_shared_public_ip_stays_allowed_until_last_subnet_goes(fw: Forwarder) -> None:
    fw.set_route(ip("10.244.5.0"), 24, ip("198.18.0.5"), 8285)
    fw.set_route(ip("10.244.6.0"), 24, ip("198.18.0.5"), 8285)
    fw.del_route(ip("10.244.5.0"), 24)
    assert fw.is_allowed_source(ip("198.18.0.5"))
    fw.del_route(ip("10.244.6.0"), 24)
    assert not fw.is_allowed_source(ip("198.18.0.5"))


def test_bad_arguments_name_the_value(fw: Forwarder) -> None:
    with pytest.raises(ValueError, match="33"):
        fw.set_route(ip("10.0.0.0"), 33, 1, 8285)
    with pytest.raises(ValueError, match="70000"):
        fw.set_route(ip("10.0.0.0"), 24, 1, 70000)


def test_thousands_of_peers_against_a_reference(fw: Forwarder) -> None:
    """5,000 /24 peers with churn: every lookup agrees with a brute-force reference."""
    rng = random.Random(7)
    network = IPv4Network("10.0.0.0/8")
    subnets = rng.sample(list(network.subnets(new_prefix=24)), 6000)
    ref: dict[IPv4Network, int] = {}
    for n, subnet in enumerate(subnets[:5000]):
        fw.set_route(int(subnet.network_address), 24, ip("198.18.0.0") + n, 8285)
        ref[subnet] = ip("198.18.0.0") + n
    for subnet in subnets[:2000:2]:
        assert fw.del_route(int(subnet.network_address), 24)
        del ref[subnet]
    assert fw.route_count() == len(ref)
    for subnet in subnets:
        probe = int(subnet.network_address) + rng.randrange(256)
        want = ref.get(subnet)
        assert fw.lookup(probe) == (None if want is None else (want, 8285))
