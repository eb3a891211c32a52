"""Choosing the external (underlay) interface, as flanneld v0.20.2 does.

Order: each ``--iface`` (a name, or an address held by an interface), then each
``--iface-regex`` (matched against the interfaces' addresses first, then their names), then
``--iface-can-reach`` (the kernel's route to that address); the first match wins. With none
of these, the interface of the default route (IPv4; the IPv6 one when IPv6 only; both must
agree in dual stack). The address is the first global unicast one, else a link-local one
(Go's notion: private ranges are global unicast). ``--public-ip``/``--public-ipv6`` override
what is published in the lease.

Deliberate differences from v0.20.2: with no interface flags, a ``--public-ip`` that is not
on any local interface (a NAT address) falls back to the default route instead of failing;
in dual stack a missing address family is always filled from the chosen interface.

Synchronous (pyroute2 ``IPRoute``): call it through ``asyncio.to_thread`` from the daemon.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
)
from typing import Any

from flannel.backend import ExternalInterface
from flannel.config import ConfigError, NetworkConfig
from flannel.ipnet import is_global_unicast, is_link_local_unicast

__all__ = [
    "InterfaceError",
    "LinkInfo",
    "check_network_overlap",
    "interface_addresses",
    "list_links",
    "lookup_ext_iface",
]

log = logging.getLogger("flannel.iface")

_MAIN_TABLE = 254


class InterfaceError(RuntimeError):
    """No usable external interface; the message says what was tried and what to do."""


@dataclass(frozen=True)
class LinkInfo:
    """One interface as seen at lookup time; addresses in kernel order."""

    index: int
    name: str
    mtu: int
    v4: tuple[IPv4Interface, ...] = ()
    v6: tuple[IPv6Interface, ...] = ()

    def usable_v4(self) -> list[IPv4Address]:
        """Global unicast IPv4 addresses first, then link-local ones (Go's order)."""
        return _usable([a.ip for a in self.v4])

    def usable_v6(self) -> list[IPv6Address]:
        return _usable([a.ip for a in self.v6])

    def describe(self) -> str:
        addrs = [str(a) for a in (*self.usable_v4(), *self.usable_v6())]
        return f"{self.name} [{', '.join(addrs)}]" if addrs else self.name


def _usable(addrs: list[Any]) -> list[Any]:
    return [a for a in addrs if is_global_unicast(a)] + [
        a for a in addrs if is_link_local_unicast(a)
    ]


def _ipr(netns: str | None) -> Any:
    from pyroute2 import IPRoute  # lazy: keeps the daemon's import time low

    return IPRoute(netns=netns, flags=0) if netns else IPRoute()


def _links(ipr: Any) -> list[LinkInfo]:
    v4: dict[int, list[IPv4Interface]] = {}
    v6: dict[int, list[IPv6Interface]] = {}
    for msg in ipr.get_addr():
        text = msg.get("local") or msg.get("address")
        if not text:
            continue
        if msg["family"] == socket.AF_INET:
            v4.setdefault(msg["index"], []).append(IPv4Interface((text, msg["prefixlen"])))
        elif msg["family"] == socket.AF_INET6:
            v6.setdefault(msg["index"], []).append(IPv6Interface((text, msg["prefixlen"])))
    links = [
        LinkInfo(
            index=msg["index"],
            name=str(msg.get("ifname")),
            mtu=int(msg.get("mtu") or 0),
            v4=tuple(v4.get(msg["index"], ())),
            v6=tuple(v6.get(msg["index"], ())),
        )
        for msg in ipr.get_links()
    ]
    return sorted(links, key=lambda link: link.index)


def list_links(netns: str | None = None) -> list[LinkInfo]:
    """Every interface with its addresses (in ``netns`` if given, else this namespace)."""
    with _ipr(netns) as ipr:
        return _links(ipr)


def interface_addresses(
    index: int, netns: str | None = None
) -> list[IPv4Interface | IPv6Interface]:
    """The addresses (with prefix) of interface ``index``: input for
    :func:`check_network_overlap`."""
    for link in list_links(netns):
        if link.index == index:
            return [*link.v4, *link.v6]
    raise InterfaceError(f"interface index {index} does not exist: it may have been removed")


# --- the selection -----------------------------------------------------------------------


@dataclass
class _Match:
    link: LinkInfo
    v4: IPv4Address | None = None
    v6: IPv6Address | None = None


class _NoMatch(Exception):
    """One candidate (an --iface value, a regex...) matched nothing; the reason is logged."""


def _by_ip(links: list[LinkInfo], addr: IPv4Address | IPv6Address) -> LinkInfo:
    for link in links:
        if addr in [a.ip for a in link.v4] or addr in [a.ip for a in link.v6]:
            return link
    raise _NoMatch(f"no interface has the address {addr}")


def _match_iface(
    links: list[LinkInfo], value: str, stack: tuple[bool, bool], public_v6: IPv6Address | None
) -> _Match:
    """``--iface`` value: an address held by an interface, else an interface name."""
    try:
        addr = ip_address(value)
    except ValueError:
        for link in links:
            if link.name == value:
                return _Match(link)
        raise _NoMatch(f"no interface is named {value!r}") from None
    link = _by_ip(links, addr)
    match = _Match(link)
    if isinstance(addr, IPv4Address):
        match.v4 = addr
    else:
        match.v6 = addr
    ipv4, ipv6 = stack
    if ipv4 and ipv6 and public_v6 is not None and match.v6 is None:
        # flanneld: in dual stack --public-ipv6, when local, must be on the same interface.
        try:
            v6_link = _by_ip(links, public_v6)
        except _NoMatch:
            return match
        if v6_link.index != link.index:
            raise InterfaceError(
                f"--public-ipv6 {public_v6} is on {v6_link.name} but --iface {value} is on "
                f"{link.name}: use addresses of one interface"
            )
        match.v6 = public_v6
    return match


def _match_regex(links: list[LinkInfo], pattern: str, stack: tuple[bool, bool]) -> _Match:
    """``--iface-regex``: first an interface whose address matches (both families in dual
    stack), else the first interface whose name matches. ``re.search``, like Go's."""
    regex = re.compile(pattern)  # validated by _check_flags
    ipv4, ipv6 = stack
    for link in links:
        v4 = next((a for a in link.usable_v4() if regex.search(str(a))), None)
        v6 = next((a for a in link.usable_v6() if regex.search(str(a))), None)
        if (v4 is not None or not ipv4) and (v6 is not None or not ipv6):
            return _Match(link, v4 if ipv4 else None, v6 if ipv6 else None)
    for link in links:
        if regex.search(link.name):
            return _Match(link)
    raise _NoMatch(f"no interface address or name matches {pattern!r}")


def _match_can_reach(ipr: Any, links: list[LinkInfo], target: str) -> _Match:
    """``--iface-can-reach``: the interface (and source address) of the route to ``target``."""
    addr = ip_address(target)  # validated by _check_flags
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        routes = list(ipr.route("get", dst=str(addr)))
    except NetlinkError as exc:
        raise _NoMatch(f"no route to {addr} ({exc})") from None
    for route in routes:
        oif = route.get("oif")
        link = next((link for link in links if link.index == oif), None)
        if link is None:
            continue
        match = _Match(link)
        src = route.get("prefsrc")
        if src:
            source = ip_address(src)
            if isinstance(source, IPv4Address):
                match.v4 = source
            else:
                match.v6 = source
        return match
    raise _NoMatch(f"no route to {addr}")


def _default_route_link(ipr: Any, links: list[LinkInfo], family: int) -> LinkInfo:
    """The interface of the main table's default route (first hop of a multipath one)."""
    label = "IPv4" if family == socket.AF_INET else "IPv6"
    for route in ipr.get_routes(family=family):
        if route.get("table") != _MAIN_TABLE or route["dst_len"] != 0:
            continue
        oif = route.get("oif")
        if oif is None:
            hops = route.get("multipath") or []
            oif = hops[0]["oif"] if hops else None
        for link in links:
            if link.index == oif:
                return link
    raise InterfaceError(
        f"no {label} default route to pick the external interface from: add a default route "
        "or choose the interface with --iface, --iface-regex or --iface-can-reach"
    )


def _default_match(
    ipr: Any, links: list[LinkInfo], stack: tuple[bool, bool],
    public_v4: IPv4Address | None, public_v6: IPv6Address | None,
) -> _Match:  # fmt: skip
    ipv4, ipv6 = stack
    # flanneld looks the public IP up as a local address first (it fails when it is not
    # local, e.g. behind NAT; we fall back to the default route instead).
    preferred = public_v4 if ipv4 else public_v6
    if preferred is not None:
        try:
            match = _match_iface(links, str(preferred), stack, public_v6)
            log.info("using the interface holding the public address %s", preferred)
            return match
        except _NoMatch:
            log.info("public address %s is not local: using the default route", preferred)
    if ipv4:
        link = _default_route_link(ipr, links, socket.AF_INET)
        if ipv6:
            v6_link = _default_route_link(ipr, links, socket.AF_INET6)
            if v6_link.index != link.index:
                raise InterfaceError(
                    f"the IPv6 default route uses {v6_link.name} but the IPv4 one uses "
                    f"{link.name}: choose the interface with --iface"
                )
        return _Match(link)
    return _Match(_default_route_link(ipr, links, socket.AF_INET6))


def _parse_public(value: str | None, v6: bool) -> Any:
    if not value:
        return None
    flag, kind = ("--public-ipv6", "IPv6") if v6 else ("--public-ip", "IPv4")
    try:
        addr = ip_address(value)
    except ValueError:
        addr = None
    if addr is None or addr.version != (6 if v6 else 4):
        raise InterfaceError(
            f"{flag} {value!r} is not an {kind} address: give this host's public {kind} address"
        )
    return addr


def _check_flags(iface_regexes: Sequence[str], iface_can_reach: str) -> None:
    for pattern in iface_regexes:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InterfaceError(
                f"--iface-regex {pattern!r} is not a valid regular expression ({exc}): "
                "fix the pattern"
            ) from None
    if iface_can_reach:
        try:
            ip_address(iface_can_reach)
        except ValueError:
            raise InterfaceError(
                f"--iface-can-reach {iface_can_reach!r} is not an IP address: give the address "
                "of a host the underlay must reach"
            ) from None


def _complete(match: _Match, stack: tuple[bool, bool]) -> _Match:
    """Fill each enabled family's address from the interface (global first)."""
    ipv4, ipv6 = stack
    link = match.link
    if ipv4 and match.v4 is None:
        usable4 = link.usable_v4()
        if not usable4:
            raise InterfaceError(
                f"interface {link.name} has no IPv4 address: add one or choose another "
                "interface with --iface"
            )
        match.v4 = usable4[0]
    if ipv6 and match.v6 is None:
        usable6 = link.usable_v6()
        if not usable6:
            raise InterfaceError(
                f"interface {link.name} has no IPv6 address: add one or choose another "
                "interface with --iface"
            )
        match.v6 = usable6[0]
    if link.mtu <= 0:
        raise InterfaceError(f"interface {link.name} reports MTU {link.mtu}: choose another")
    return match


def lookup_ext_iface(
    *,
    ifaces: Sequence[str] = (),
    iface_regexes: Sequence[str] = (),
    iface_can_reach: str = "",
    public_ip: str | None = None,
    public_ipv6: str | None = None,
    ipv4: bool = True,
    ipv6: bool = False,
    netns: str | None = None,
) -> ExternalInterface:
    """Pick the external interface and addresses. Raises :class:`InterfaceError`.

    ``ipv4``/``ipv6`` are the config's enabled families; ``netns`` looks in that namespace
    (tests) instead of the current one.
    """
    if not (ipv4 or ipv6):
        raise InterfaceError("neither IPv4 nor IPv6 is enabled: enable one in the network config")
    stack = (ipv4, ipv6)
    public_v4: IPv4Address | None = _parse_public(public_ip, v6=False)
    public_v6: IPv6Address | None = _parse_public(public_ipv6, v6=True)
    _check_flags(iface_regexes, iface_can_reach)  # bad syntax fails now, not as "no match"
    with _ipr(netns) as ipr:
        links = _links(ipr)
        match: _Match | None = None
        if not (ifaces or iface_regexes or iface_can_reach):
            match = _default_match(ipr, links, stack, public_v4, public_v6)
        else:
            tried: list[str] = []
            attempts: list[tuple[str, Callable[[], _Match]]] = [
                (f"--iface {v}", partial(_match_iface, links, v, stack, public_v6)) for v in ifaces
            ]
            attempts += [
                (f"--iface-regex {p}", partial(_match_regex, links, p, stack))
                for p in iface_regexes
            ]
            if iface_can_reach:
                label = f"--iface-can-reach {iface_can_reach}"
                attempts.append((label, partial(_match_can_reach, ipr, links, iface_can_reach)))
            for label, attempt in attempts:
                try:
                    match = _complete(attempt(), stack)
                    break
                except (_NoMatch, InterfaceError) as exc:
                    log.info("could not use %s: %s", label, exc)
                    tried.append(f"{label}: {exc}")
            if match is None:
                known = ", ".join(link.describe() for link in links) or "none"
                raise InterfaceError(
                    f"no interface matches the given --iface/--iface-regex/--iface-can-reach "
                    f"({'; '.join(tried)}); interfaces here: {known}"
                )
    match = _complete(match, stack)
    link = match.link
    log.info(
        "using interface %s (index %d, mtu %d) with address %s",
        link.name, link.index, link.mtu, " ".join(str(a) for a in (match.v4, match.v6) if a),
    )  # fmt: skip
    return ExternalInterface(
        name=link.name,
        index=link.index,
        mtu=link.mtu,
        iface_addr=match.v4,
        iface_v6_addr=match.v6,
        ext_addr=public_v4 or match.v4,
        ext_v6_addr=public_v6 or match.v6,
    )


def check_network_overlap(
    config: NetworkConfig,
    ext_iface_addresses: Iterable[IPv4Interface | IPv6Interface],
    iface_name: str = "the external interface",
) -> None:
    """Refuse a flannel network that contains an address of the underlay interface: pod
    routes would capture the host's own traffic. A connected subnet that merely contains
    the flannel network (a /8 underlay around a /16 pod network) is only warned about.
    Raises :class:`ConfigError`."""
    nets4 = [n for n in (config.network, *config.networks) if n is not None]
    nets6 = [n for n in (config.ipv6_network, *config.ipv6_networks) if n is not None]
    for addr in ext_iface_addresses:
        if isinstance(addr, IPv4Interface):
            pairs: list[tuple[str, Any]] = [("Network", n) for n in nets4]
        else:
            pairs = [("IPv6Network", n) for n in nets6]
        for key, net in pairs:
            if addr.ip in net:
                raise ConfigError(
                    f"{key} {net} contains {addr} of the underlay interface {iface_name}: "
                    f"choose a {key} that does not overlap {addr.network}, or another interface"
                )
            if net.subnet_of(addr.network):
                log.warning(
                    "%s %s lies inside %s of the underlay interface %s: underlay hosts in "
                    "that range will be unreachable", key, net, addr.network, iface_name,
                )  # fmt: skip
