"""Did the kernel change anything we own since the last full reconcile?

A periodic reconcile dumps neighbours, FDB entries and routes to repair drift; at 10,000
peers that costs tens of milliseconds of CPU per pass although nothing changes for hours.
:class:`KernelChangeWatch` listens on rtnetlink's multicast groups (neighbours and FDB,
IPv4/IPv6 routes, links) and remembers whether a message concerned our devices or our
routes, so the caller can skip the dumps while the kernel stayed quiet.

Messages queue in the socket between passes and are drained without blocking by
:meth:`KernelChangeWatch.poll` (from the reconcile's worker thread, or from
``loop.add_reader(watch.fileno(), watch.poll)``). A full queue (``ENOBUFS``), a message we
cannot classify or a broken socket all count as a change: when unsure, dump. Our own writes
are reported too, which costs one extra full pass after them. Call :meth:`clear` only
after a full pass succeeded; everything received after the last :meth:`poll` stays queued
and marks the next pass dirty, so no change is lost between the drain and the dumps.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from flannel.netlink._rtnl import in_netns

__all__ = [
    "DEFAULT_GROUPS",
    "RTNLGRP_IPV4_ROUTE",
    "RTNLGRP_IPV6_ROUTE",
    "RTNLGRP_LINK",
    "RTNLGRP_NEIGH",
    "KernelChangeWatch",
]

# linux/rtnetlink.h
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_ROUTE = 11
DEFAULT_GROUPS = (RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE)

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLMSG_OVERRUN = 4
RTA_DST, RTA_OIF, RTA_MULTIPATH = 1, 4, 9
RTPROT_FLANNEL = 75
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
_RCVBUF = 1 << 20
"""Enough for a few thousand unrelated messages between passes; overflowing only costs a
full pass (ENOBUFS marks dirty)."""

_NLMSGHDR = struct.Struct("=IHHII")
_IFINDEX = struct.Struct("=i")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")

IPNetwork = IPv4Network | IPv6Network


class KernelChangeWatch:
    """Remembers whether the kernel reported a change to our devices or routes.

    ``ifindexes``: devices whose neighbours/FDB entries, routes and link state are ours
    (the vxlan devices). ``links``: further devices whose link messages matter (e.g. the
    underlay of direct routes: IPv4 routes vanish without a route message when their
    device goes down). ``scope``: destinations of our routes (any route message inside it
    counts); ``None`` means every route carrying ``protocol``. ``rcvbuf`` bounds the queue
    between polls. Starts dirty. Not thread-safe: poll from one thread at a time.
    """

    def __init__(
        self,
        ifindexes: Iterable[int],
        *,
        links: Iterable[int] = (),
        scope: Iterable[IPNetwork] | None = None,
        protocol: int = RTPROT_FLANNEL,
        groups: Iterable[int] = DEFAULT_GROUPS,
        netns: str | None = None,
        rcvbuf: int = _RCVBUF,
    ) -> None:
        self.ifindexes = set(ifindexes)
        self.links = set(links)
        self.scope: tuple[IPNetwork, ...] | None = None if scope is None else tuple(scope)
        self.protocol = protocol
        self._dirty = True
        self.reasons: list[str] = []
        """Why the flag is set (the first few messages), for logs and tests."""
        with in_netns(netns):
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
        self._sock: socket.socket | None = sock
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, 0))
            for group in groups:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._buf = bytearray(1 << 16)

    # -- state ------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Drain what is queued, then tell whether anything concerned us since :meth:`clear`."""
        return self.poll()

    def clear(self) -> None:
        """Forget the changes seen so far: call after a full pass that started after the
        last :meth:`poll` (a closed watch stays dirty)."""
        if self._sock is not None:
            self._dirty = False
            self.reasons.clear()

    def take(self) -> bool:
        """:attr:`dirty`, then :meth:`clear` (for callers that cannot fail half-way)."""
        dirty = self.poll()
        self.clear()
        return dirty

    def mark(self, why: str) -> None:
        self._dirty = True
        if len(self.reasons) < 8:
            self.reasons.append(why)

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._dirty = True

    def __enter__(self) -> KernelChangeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def poll(self) -> bool:
        """Read every queued message without blocking; return :attr:`dirty`."""
        sock = self._sock
        if sock is None:
            return True
        buf = self._buf
        while True:
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return self._dirty
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the queue overflowed: messages were lost
                    self.mark("netlink socket overrun (ENOBUFS)")
                    continue
                self.mark(f"netlink socket failed: {exc}")
                with contextlib.suppress(OSError):
                    sock.close()
                self._sock = None
                return True
            if not n:
                return self._dirty
            if not self._dirty:
                self._scan(bytes(buf[:n]), n)

    def _scan(self, data: bytes, n: int) -> None:
        offset = 0
        while offset + 16 <= n and not self._dirty:
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < 16 or offset + length > n:
                self.mark("truncated netlink message")
                return
            why = self._concerns(kind, data, offset + 16, offset + length)
            if why:
                self.mark(why)
            offset += (length + 3) & ~3

    def _concerns(self, kind: int, data: bytes, body: int, end: int) -> str:
        """Why this message matters to us, or "" when it does not."""
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_NEWLINK, RTM_DELLINK):
            if end - body < 8:
                return f"short netlink message type {kind}"
            index = _IFINDEX.unpack_from(data, body + 4)[0]
            if index in self.ifindexes:
                return f"netlink message type {kind} on device {index}"
            if kind in (RTM_NEWLINK, RTM_DELLINK) and index in self.links:
                return f"link message type {kind} on device {index}"
            return ""
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            return self._route_concerns(kind, data, body, end)
        if kind == NLMSG_OVERRUN:
            return "netlink overrun"
        return ""

    def _route_concerns(self, kind: int, data: bytes, body: int, end: int) -> str:
        if end - body < _RTMSG.size:
            return "short route message"
        family, dst_len, _s, _tos, _table, proto, _scope, _type, _flags = _RTMSG.unpack_from(
            data, body
        )
        if family not in (socket.AF_INET, socket.AF_INET6):
            return ""
        dst = None
        offset = body + _RTMSG.size
        while offset + 4 <= end:
            length, attr = _RTA.unpack_from(data, offset)
            if length < 4:
                break
            attr &= 0x3FFF
            if attr == RTA_OIF and length >= 8:
                oif = _IFINDEX.unpack_from(data, offset + 4)[0]
                if oif in self.ifindexes:
                    return f"route message type {kind} on device {oif}"
            elif attr == RTA_DST:
                dst = data[offset + 4 : offset + length]
            elif attr == RTA_MULTIPATH:
                return f"multipath route message type {kind}"  # nexthops not parsed: unsure
            offset += (length + 3) & ~3
        if self.scope is None:
            ours = proto == self.protocol
            return f"route message type {kind} with protocol {proto}" if ours else ""
        size = 4 if family == socket.AF_INET else 16
        raw = dst if dst is not None else bytes(size)
        if len(raw) != size:
            return f"route message type {kind} with a bad destination"
        net: IPNetwork
        try:
            if family == socket.AF_INET:
                net = IPv4Network((raw, dst_len), strict=False)
            else:
                net = IPv6Network((raw, dst_len), strict=False)
        except ValueError:
            return f"route message type {kind} with a bad destination"
        for own in self.scope:
            if own.version == net.version and net.subnet_of(own):  # type: ignore[arg-type]
                return f"route message type {kind} for {net}"
        return ""
