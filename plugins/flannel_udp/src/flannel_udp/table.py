"""The pure-Python peer table: which peer owns a destination, and who may send to us.

Readers (the forwarder threads) never lock: every update builds new dicts and swaps one
reference (copy-on-write, RCU style), so a lookup sees either the old or the new table. A
lookup costs one dict probe per distinct prefix length (one with flannel's single SubnetLen).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

__all__ = ["Peer", "PeerTable"]

Peer = tuple[int, int]
"""(public IPv4 address as an int, UDP port)."""


def _mask(prefixlen: int) -> int:
    return (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF if prefixlen else 0


@dataclass(frozen=True)
class _Snapshot:
    by_len: tuple[tuple[int, int, dict[int, Peer]], ...] = ()
    """(prefixlen, mask, {masked net: peer}), longest prefix first."""
    sources: frozenset[int] = field(default_factory=frozenset)
    source_names: frozenset[str] = field(default_factory=frozenset)
    """The same addresses in dotted form, as recvfrom reports them (no per-packet parse)."""


class PeerTable:
    """Subnet -> peer, with longest-prefix lookup and the set of peers' public addresses."""

    def __init__(self) -> None:
        self._routes: dict[int, dict[int, Peer]] = {}
        """The writers' copy: prefixlen -> {masked net: peer}."""
        self._sources: Counter[int] = Counter()
        self._write_lock = threading.Lock()
        self._snap = _Snapshot()

    def set_route(self, net: int, prefixlen: int, peer_ip: int, peer_port: int) -> None:
        """Add or replace the peer for ``net/prefixlen`` (host bits are masked off)."""
        _check_prefix(prefixlen)
        if not 1 <= peer_port <= 65535:
            raise ValueError(f"port {peer_port} is not in 1..65535")
        net &= _mask(prefixlen)
        with self._write_lock:
            nets = self._routes.setdefault(prefixlen, {})
            old = nets.get(net)
            nets[net] = (peer_ip, peer_port)
            self._sources[peer_ip] += 1
            if old is not None:
                self._drop_source(old[0])
            self._publish(prefixlen)

    def del_route(self, net: int, prefixlen: int) -> bool:
        """Remove ``net/prefixlen``; False if it was not there."""
        _check_prefix(prefixlen)
        with self._write_lock:
            nets = self._routes.get(prefixlen, {})
            old = nets.pop(net & _mask(prefixlen), None)
            if old is None:
                return False
            if not nets:
                del self._routes[prefixlen]
            self._drop_source(old[0])
            self._publish(prefixlen)
            return True

    def lookup(self, dst: int) -> Peer | None:
        """The peer owning ``dst`` (longest prefix wins), or None."""
        for _plen, mask, nets in self._snap.by_len:
            peer = nets.get(dst & mask)
            if peer is not None:
                return peer
        return None

    def is_allowed_source(self, ip: int) -> bool:
        return ip in self._snap.sources

    def is_allowed_source_name(self, dotted: str) -> bool:
        return dotted in self._snap.source_names

    def route_count(self) -> int:
        return sum(len(nets) for nets in self._routes.values())

    def _drop_source(self, ip: int) -> None:
        self._sources[ip] -= 1
        if self._sources[ip] <= 0:
            del self._sources[ip]

    def _publish(self, changed_len: int) -> None:
        # Copy only the dict of the changed prefix length (a C-speed copy); the others are
        # shared with the previous snapshot, which readers may still be using.
        grouped = {plen: d for plen, _m, d in self._snap.by_len if plen != changed_len}
        if changed_len in self._routes:
            grouped[changed_len] = dict(self._routes[changed_len])
        by_len = tuple((plen, _mask(plen), grouped[plen]) for plen in sorted(grouped, reverse=True))
        sources = frozenset(self._sources)
        names = frozenset(str(IPv4Address(ip)) for ip in sources)
        self._snap = _Snapshot(by_len, sources, names)


def _check_prefix(prefixlen: int) -> None:
    if not 0 <= prefixlen <= 32:
        raise ValueError(f"prefix length {prefixlen} is not in 0..32")
