"""Peer events -> peer table (pure logic: a never-started Python forwarder, no fds)."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend import BackendContext, ExternalInterface
from flannel.config import NetworkConfig
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel_udp.network import UdpNetwork, apply_events
from flannel_udp.options import UdpOptions
from flannel_udp.pyforward import PyForwarder


async def _no_lease(**_: Any) -> Lease:
    raise AssertionError("not called")


def make_network(port: int = 9000) -> UdpNetwork:
    config = NetworkConfig(
        network=IPv4Network("10.244.0.0/16"), subnet_len=24,
        subnet_min=IPv4Address("10.244.1.0"), subnet_max=IPv4Address("10.244.255.0"),
    )  # fmt: skip
    ctx = BackendContext(
        backend_type="udp", network=config,
        ext_iface=ExternalInterface("eth0", 2, 1500, IPv4Address("198.18.0.11")),
        acquire_lease=_no_lease, metrics=Metrics(),
    )  # fmt: skip
    own = Lease(IPv4Network("10.244.1.0/24"), LeaseAttrs(IPv4Address("198.18.0.11")))
    return UdpNetwork(
        backend_type="udp", lease=own, mtu=1472, ctx=ctx, options=UdpOptions(port=port),
        forwarder=PyForwarder(-1, -1, int(IPv4Address("10.244.1.0"))),
    )  # fmt: skip


def lease(subnet: str, ip: str, backend_type: str = "") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type=backend_type))


def addr(text: str) -> int:
    return int(IPv4Address(text))


def test_added_peer_uses_its_public_ip_and_our_port() -> None:
    net = make_network(port=9000)
    apply_events(net, [Event.added(lease("10.244.5.0/24", "198.18.0.15"))])
    assert net.forwarder is not None
    assert net.forwarder.lookup(addr("10.244.5.9")) == (addr("198.18.0.15"), 9000)
    assert net.forwarder.is_allowed_source(addr("198.18.0.15"))


def test_changed_public_ip_replaces_and_removed_deletes() -> None:
    net = make_network()
    fw = net.forwarder
    assert fw is not None
    apply_events(net, [Event.added(lease("10.244.5.0/24", "198.18.0.15"))])
    apply_events(net, [Event.added(lease("10.244.5.0/24", "198.18.0.16"))])
    assert fw.lookup(addr("10.244.5.1")) == (addr("198.18.0.16"), 9000)
    assert not fw.is_allowed_source(addr("198.18.0.15"))
    apply_events(net, [Event.removed(lease("10.244.5.0/24", "198.18.0.16"))])
    assert fw.lookup(addr("10.244.5.1")) is None
    assert fw.route_count() == 0


def test_other_backend_types_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    net = make_network()
    fw = net.forwarder
    assert fw is not None
    apply_events(net, [Event.added(lease("10.244.6.0/24", "198.18.0.16"))])
    with caplog.at_level(logging.WARNING, logger="flannel.udp"):
        apply_events(net, [Event.added(lease("10.244.6.0/24", "198.18.0.16", "vxlan"))])
    assert "not udp" in caplog.text
    assert fw.lookup(addr("10.244.6.1")) is None  # a host that switched backends is gone
    apply_events(net, [Event.added(lease("10.244.7.0/24", "198.18.0.17", "udp"))])
    assert fw.lookup(addr("10.244.7.1")) == (addr("198.18.0.17"), 9000)


def test_own_lease_and_leases_without_address_are_skipped() -> None:
    net = make_network()
    fw = net.forwarder
    assert fw is not None
    apply_events(
        net,
        [
            Event.added(lease("10.244.1.0/24", "198.18.0.11")),
            Event.added(lease("10.244.8.0/24", "0.0.0.0")),
        ],
    )
    assert fw.route_count() == 0
