"""The pure-Python data path: two threads, same behaviour and API as the C ``Forwarder``.

It is the fallback when the extension is not built (or ``FLANNEL_UDP_DATAPATH=python``):
roughly flanneld's speed, since the kernel side dominates a one-packet-per-syscall loop.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections import Counter

from flannel_udp.packet import MIN_IPV4_HEADER, decrement_ttl, net_unreachable
from flannel_udp.table import Peer, PeerTable

__all__ = ["COUNTER_NAMES", "PyForwarder"]

BUF_SIZE = 65536
_FLUSH_EVERY = 256
"""Packets handled between two updates of the shared counters (and stop checks)."""

COUNTER_NAMES = (
    "tun_rx_packets", "tun_rx_bytes", "udp_tx_packets", "udp_tx_bytes",
    "udp_rx_packets", "udp_rx_bytes", "tun_tx_packets", "tun_tx_bytes",
    "drop_no_route", "drop_ttl_egress", "drop_ttl_ingress", "drop_unknown_source",
    "drop_malformed", "drop_not_ipv4", "drop_send_error", "drop_tun_write_error",
    "icmp_unreachable", "last_unknown_source", "tun_tx_writes", "tun_rx_segments",
)  # fmt: skip


class PyForwarder:
    """Forward between a TUN fd and a UDP socket fd; neither fd is closed here."""

    def __init__(self, tun_fd: int, sock_fd: int, tun_addr: int) -> None:
        self._tun_fd = tun_fd
        self._sock_fd = sock_fd
        self._tun_addr = tun_addr
        self._table = PeerTable()
        self._threads: list[threading.Thread] = []
        self._wake_r = self._wake_w = -1
        self._stopping = False
        self._sock: socket.socket | None = None
        # One counter set per thread so no increment races another thread's.
        # All keys exist from the start, so a concurrent stats() copy never sees a resize.
        self._egress: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))
        self._ingress: Counter[str] = Counter(dict.fromkeys(COUNTER_NAMES, 0))

    # -- peer table (same signatures as the C Forwarder) --
    def set_route(self, net: int, prefixlen: int, peer_ip: int, peer_port: int) -> None:
        self._table.set_route(net, prefixlen, peer_ip, peer_port)

    def del_route(self, net: int, prefixlen: int) -> bool:
        return self._table.del_route(net, prefixlen)

    def lookup(self, dst: int) -> Peer | None:
        return self._table.lookup(dst)

    def is_allowed_source(self, ip: int) -> bool:
        return self._table.is_allowed_source(ip)

    def route_count(self) -> int:
        return self._table.route_count()

    # -- lifecycle --
    @property
    def running(self) -> bool:
        return bool(self._threads)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("forwarder already running")
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        sock = socket.socket(fileno=os.dup(self._sock_fd))
        self._threads = [
            threading.Thread(target=self._tun_to_udp, args=(sock,), name="udp-egress", daemon=True),
            threading.Thread(
                target=self._udp_to_tun, args=(sock,), name="udp-ingress", daemon=True
            ),
        ]
        self._sock = sock
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if not self._threads:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join()
        self._threads = []
        if self._sock is not None:
            self._sock.close()  # our dup of the caller's fd
        self._sock = None
        os.close(self._wake_r)
        os.close(self._wake_w)

    def stats(self) -> dict[str, int]:
        merged = dict.fromkeys(COUNTER_NAMES, 0)
        for part in (dict(self._egress), dict(self._ingress)):
            for name, value in part.items():
                merged[name] += value
        return merged

    # -- workers --
    def _wait(self, fd: int) -> bool:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            events = poller.poll(1000)
            if any(efd == self._wake_r for efd, _ in events):
                return False
            if events:
                return True
        return False

    def _tun_to_udp(self, sock: socket.socket) -> None:
        count = self._egress
        lookup = self._table.lookup
        read, tun_fd, sendto = os.read, self._tun_fd, sock.sendto
        names: dict[Peer, tuple[str, int]] = {}
        while self._wait(tun_fd):
            packets = octets = segments = sent = sent_octets = 0
            while not self._stopping and packets < _FLUSH_EVERY:
                try:
                    data = read(tun_fd, BUF_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    return
                packets += 1
                octets += len(data)
                if len(data) < MIN_IPV4_HEADER:
                    count["drop_malformed"] += 1
                    continue
                if data[0] >> 4 != 4:
                    count["drop_not_ipv4"] += 1
                    continue
                peer = lookup(int.from_bytes(data[16:20], "big"))
                if peer is None:
                    count["drop_no_route"] += 1
                    self._send_unreachable(data)
                    continue
                packet = bytearray(data)
                if not decrement_ttl(packet):
                    count["drop_ttl_egress"] += 1
                    continue
                addr = names.get(peer)
                if addr is None:
                    if len(names) > 4096:
                        names.clear()
                    addr = names[peer] = (_ntoa(peer[0]), peer[1])
                segments += 1
                try:
                    sendto(packet, addr)
                except OSError:
                    count["drop_send_error"] += 1
                    continue
                sent += 1
                sent_octets += len(packet)
            count["tun_rx_packets"] += packets
            count["tun_rx_bytes"] += octets
            count["tun_rx_segments"] += segments
            count["udp_tx_packets"] += sent
            count["udp_tx_bytes"] += sent_octets

    def _send_unreachable(self, data: bytes) -> None:
        icmp = net_unreachable(data, self._tun_addr)
        if icmp is None:
            return
        try:
            os.write(self._tun_fd, icmp)
        except OSError:
            return
        self._egress["icmp_unreachable"] += 1

    def _udp_to_tun(self, sock: socket.socket) -> None:
        count = self._ingress
        allowed = self._table.is_allowed_source_name
        write, tun_fd, recv = os.write, self._tun_fd, sock.recvfrom_into
        buf = bytearray(BUF_SIZE)
        view = memoryview(buf)
        dontwait = socket.MSG_DONTWAIT
        while self._wait(self._sock_fd):
            packets = octets = written = written_octets = 0
            while not self._stopping and packets < _FLUSH_EVERY:
                try:
                    size, addr = recv(buf, BUF_SIZE, dontwait)
                except BlockingIOError:
                    break
                except OSError:
                    return
                packets += 1
                octets += size
                if not allowed(addr[0]):
                    count["last_unknown_source"] = _aton(addr[0])
                    count["drop_unknown_source"] += 1
                    continue
                if size < MIN_IPV4_HEADER:
                    count["drop_malformed"] += 1
                    continue
                if buf[0] >> 4 != 4:
                    count["drop_not_ipv4"] += 1
                    continue
                if not decrement_ttl(buf):
                    count["drop_ttl_ingress"] += 1
                    continue
                try:
                    write(tun_fd, view[:size])
                except OSError:
                    count["drop_tun_write_error"] += 1
                    continue
                written += 1
                written_octets += size
            count["udp_rx_packets"] += packets
            count["udp_rx_bytes"] += octets
            count["tun_tx_writes"] += written
            count["tun_tx_packets"] += written
            count["tun_tx_bytes"] += written_octets


def _ntoa(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


def _aton(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")
