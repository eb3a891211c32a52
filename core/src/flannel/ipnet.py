"""Small IP helpers with Go's semantics, where flanneld's behaviour depends on them.

Python's :mod:`ipaddress` differs from Go's ``net`` package in a few places that matter for
compatibility: Go's ``IsGlobalUnicast`` is true for private addresses (10/8, 192.168/16...),
``ParseCIDR`` accepts only ``addr/prefixlen`` and masks host bits. These helpers keep those
rules in one place.
"""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

__all__ = [
    "first_host",
    "is_global_unicast",
    "is_link_local_unicast",
    "parse_ipv4",
    "parse_ipv4_cidr",
    "parse_ipv6",
    "parse_ipv6_cidr",
]

_LINK_LOCAL_V4 = IPv4Network("169.254.0.0/16")
_LINK_LOCAL_V6 = IPv6Network("fe80::/10")


def is_link_local_unicast(addr: IPv4Address | IPv6Address) -> bool:
    """Go's ``IP.IsLinkLocalUnicast``: 169.254.0.0/16 or fe80::/10."""
    if isinstance(addr, IPv4Address):
        return addr in _LINK_LOCAL_V4
    return addr in _LINK_LOCAL_V6


def is_global_unicast(addr: IPv4Address | IPv6Address) -> bool:
    """Go's ``IP.IsGlobalUnicast``: any unicast address that is not loopback, link-local,
    unspecified or the limited broadcast. Unlike ``ipaddress.is_global``, private ranges
    count (a host on 10.0.0.5 uses it as its flannel address)."""
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        return False
    if is_link_local_unicast(addr):
        return False
    return not (isinstance(addr, IPv4Address) and addr == IPv4Address("255.255.255.255"))


def _split_cidr(text: str, max_len: int) -> tuple[str, int]:
    addr, sep, plen = text.partition("/")
    if not sep or not plen.isascii() or not plen.isdigit() or "%" in addr:
        raise ValueError(f"{text!r} is not in CIDR notation (address/prefix-length)")
    length = int(plen)
    if length > max_len:
        raise ValueError(f"{text!r} has a prefix length above /{max_len}")
    return addr, length


def parse_ipv4(text: str) -> IPv4Address:
    """A dotted-quad IPv4 address (no leading zeros). Raises ValueError."""
    return IPv4Address(text)


def parse_ipv6(text: str) -> IPv6Address:
    """An IPv6 address without zone. Raises ValueError."""
    if "%" in text:
        raise ValueError(f"{text!r} has a zone index")
    return IPv6Address(text)


def parse_ipv4_cidr(text: str) -> IPv4Network:
    """Parse ``a.b.c.d/len`` like Go's ``net.ParseCIDR``: host bits are masked
    (``10.1.2.3/16`` gives ``10.1.0.0/16``). Raises ValueError."""
    addr, length = _split_cidr(text, 32)
    return IPv4Network((IPv4Address(addr), length), strict=False)


def parse_ipv6_cidr(text: str) -> IPv6Network:
    """Parse ``addr/len`` (IPv6), masking host bits. Raises ValueError."""
    addr, length = _split_cidr(text, 128)
    return IPv6Network((parse_ipv6(addr), length), strict=False)


def first_host(net: IPv4Network | IPv6Network) -> IPv4Interface | IPv6Interface:
    """The subnet's network address plus one, with the subnet's prefix: what flanneld writes
    as ``FLANNEL_SUBNET`` (10.1.74.0/24 gives 10.1.74.1/24)."""
    if isinstance(net, IPv4Network):
        return IPv4Interface((net.network_address + 1, net.prefixlen))
    return IPv6Interface((net.network_address + 1, net.prefixlen))
