"""The udp backend's network: flannel0 + a UDP socket + a forwarder, and its lifecycle.

register: open the TUN and bind the socket first (fail before taking a lease), acquire a
lease without BackendType (flanneld's udp lease), then address/route the TUN. run: the
forwarder threads until cancelled, copying counters into the metrics every second.
events: peer subnet -> public IP and *our* Port (flanneld's assumption), updated in place.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from flannel.backend import BackendConfigError, BackendContext, BackendError, BackendNetwork
from flannel.events import Event, EventType
from flannel.lease import Lease
from flannel_udp.datapath import Forwarder, make_forwarder, resolve_datapath, wants_offload
from flannel_udp.device import configure_tun
from flannel_udp.metrics import publish_stats
from flannel_udp.options import UdpOptions, parse_options
from flannel_udp.tun import open_tun

__all__ = ["ENCAP_OVERHEAD", "TUN_NAME", "TYPE", "UdpNetwork", "apply_events", "register", "run"]

log = logging.getLogger("flannel.udp")

TYPE = "udp"
TUN_NAME = "flannel0"
ENCAP_OVERHEAD = 28
"""IPv4 header (20) + UDP header (8) added around every packet."""
_SOCKET_BUFFER = 4 << 20
_STATS_INTERVAL = 1.0
_UDP_LEASE_TYPES = ("", TYPE)
"""BackendType values of udp peers: flanneld writes none; accept an explicit "udp" too."""


@dataclass(eq=False)
class UdpNetwork(BackendNetwork):
    """A registered udp network; ``run`` owns and finally closes the fds."""

    options: UdpOptions = field(default_factory=UdpOptions)
    tun_fd: int = -1
    sock: socket.socket | None = None
    forwarder: Forwarder | None = None
    datapath: str = ""

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tun_fd >= 0:
            os.close(self.tun_fd)
            self.tun_fd = -1


def _bind_socket(addr: IPv4Address, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((str(addr), port))
    except OSError as exc:
        sock.close()
        raise BackendError(
            f"udp backend cannot bind {addr}:{port} ({exc.strerror}); free the port or set "
            "Backend.Port to another one"
        ) from None
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE as root
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
    return sock


def _open_tun(offload: bool) -> tuple[int, str, bool]:
    """flannel0 (fd, name, offload on?): with TSO when asked and the kernel allows it."""
    if offload:
        try:
            return (*open_tun(TUN_NAME, offload=True), True)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP):
                raise
            log.warning("udp: TUN offload unavailable (%s); plain C data path", exc.strerror)
    return (*open_tun(TUN_NAME), False)


async def register(ctx: BackendContext) -> UdpNetwork:
    options = parse_options(ctx.backend_options)
    network = ctx.network.network
    if network is None or not ctx.network.enable_ipv4:
        raise BackendConfigError(
            "udp backend carries IPv4 only: set Network (and EnableIPv4) in the network config, "
            "or pick another backend for IPv6-only networks"
        )
    if ctx.network.enable_ipv6:
        log.warning("udp backend forwards IPv4 only; the IPv6 network gets no data path")
    iface_addr = ctx.ext_iface.iface_addr
    if iface_addr is None:
        raise BackendError(
            f"udp backend needs an IPv4 address on interface {ctx.ext_iface.name}; add one or "
            "choose another --iface"
        )
    mtu = ctx.ext_iface.mtu - ENCAP_OVERHEAD
    datapath = resolve_datapath()
    offload = wants_offload(datapath)
    sock = _bind_socket(iface_addr, options.port)
    try:
        tun_fd, tun_name, offload = _open_tun(offload)
    except OSError as exc:
        sock.close()
        raise BackendError(f"udp backend: {exc.strerror}") from None
    udp = None
    try:
        lease = await ctx.acquire_lease(backend_type="")
        if lease.subnet is None:
            raise BackendError("udp backend got a lease without an IPv4 subnet; check the config")
        tun_addr = lease.subnet.network_address
        await asyncio.to_thread(configure_tun, tun_name, mtu, tun_addr, network)
        forwarder = make_forwarder(tun_fd, sock.fileno(), int(tun_addr), datapath, offload)
        udp = UdpNetwork(
            backend_type=TYPE, lease=lease, mtu=mtu, ctx=ctx, options=options,
            tun_fd=tun_fd, sock=sock, forwarder=forwarder, datapath=datapath,
        )  # fmt: skip
    finally:
        if udp is None:
            sock.close()
            os.close(tun_fd)
    log.info(
        "udp backend: %s mtu %d, %s/32, listening on %s:%d, %s data path%s",
        tun_name, mtu, tun_addr, iface_addr, options.port, datapath,
        " with TSO" if offload else "",
    )  # fmt: skip
    return udp


async def run(network: UdpNetwork) -> None:
    """Forward until cancelled; stop the workers and close both fds on the way out."""
    forwarder = network.forwarder
    if forwarder is None:
        raise BackendError("udp network was closed; register it again")
    metrics = network.ctx.metrics
    reported = 0
    try:
        forwarder.start()
        while True:
            stats = forwarder.stats()
            publish_stats(metrics, stats, forwarder.route_count())
            reported = _report_strangers(stats, reported)
            if not forwarder.alive:
                raise BackendError("udp data path stopped unexpectedly (TUN or socket error)")
            await asyncio.sleep(_STATS_INTERVAL)
    finally:
        # Synchronous on purpose: the workers wake on an eventfd and are joined within
        # milliseconds, and no second cancellation can interrupt the join and leave threads
        # using fds that close() is about to release.
        forwarder.stop()
        publish_stats(metrics, forwarder.stats(), forwarder.route_count())
        network.close()


def _report_strangers(stats: dict[str, int], reported: int) -> int:
    """Warn (at most once per stats tick) about datagrams from non-peer addresses: someone
    is trying to inject packets into pods, or a peer's lease is missing."""
    dropped = stats.get("drop_unknown_source", 0)
    if dropped > reported:
        log.warning(
            "udp: dropped %d datagram(s) from addresses that hold no lease (last from %s); "
            "total %d",
            dropped - reported, IPv4Address(stats.get("last_unknown_source", 0)), dropped,
        )  # fmt: skip
    return dropped


def apply_events(network: UdpNetwork, events: Sequence[Event]) -> None:
    """Update the peer table in place; traffic to other peers never pauses."""
    forwarder = network.forwarder
    if forwarder is None:
        return
    own = network.lease.subnet
    for event in events:
        lease = event.lease
        subnet = lease.subnet
        if subnet is None or subnet == own:
            continue
        net, plen = int(subnet.network_address), subnet.prefixlen
        if event.type is EventType.REMOVED:
            if forwarder.del_route(net, plen):
                log.info("udp: removed peer %s", subnet)
            continue
        if lease.attrs.backend_type not in _UDP_LEASE_TYPES:
            log.warning(
                "udp: ignoring lease %s of backend type %r (not udp)",
                subnet, lease.attrs.backend_type,
            )  # fmt: skip
            forwarder.del_route(net, plen)
            continue
        if not _has_public_ip(lease):
            log.warning("udp: ignoring lease %s without a public IPv4 address", subnet)
            forwarder.del_route(net, plen)
            continue
        forwarder.set_route(net, plen, int(lease.attrs.public_ip), network.options.port)
        log.info("udp: peer %s via %s:%d", subnet, lease.attrs.public_ip, network.options.port)


def _has_public_ip(lease: Lease) -> bool:
    ip = lease.attrs.public_ip
    return not (ip.is_unspecified or ip.is_multicast)
