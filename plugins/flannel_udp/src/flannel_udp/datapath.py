"""Pick the data path: the C extension when built, else the pure-Python forwarder.

``FLANNEL_UDP_DATAPATH`` = ``auto`` (default), ``c`` (fail if the extension is missing) or
``python`` (force the fallback, e.g. in tests). The C path also takes TCP super-packets
from the TUN (TSO) and segments them itself; ``FLANNEL_UDP_OFFLOAD=0`` turns that off.
"""

from __future__ import annotations

import os
from typing import Protocol

from flannel.backend import BackendError
from flannel_udp.table import Peer

__all__ = [
    "DATAPATH_ENV",
    "OFFLOAD_ENV",
    "Forwarder",
    "fastpath_available",
    "make_forwarder",
    "resolve_datapath",
    "wants_offload",
]

DATAPATH_ENV = "FLANNEL_UDP_DATAPATH"
OFFLOAD_ENV = "FLANNEL_UDP_OFFLOAD"
_CHOICES = ("auto", "c", "python")


class Forwarder(Protocol):
    """What the backend needs from a data path (both implementations provide it)."""

    def set_route(self, net: int, prefixlen: int, peer_ip: int, peer_port: int, /) -> None: ...
    def del_route(self, net: int, prefixlen: int, /) -> bool: ...
    def lookup(self, dst: int, /) -> Peer | None: ...
    def is_allowed_source(self, ip: int, /) -> bool: ...
    def route_count(self) -> int: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def running(self) -> bool: ...
    @property
    def alive(self) -> bool: ...


def fastpath_available() -> bool:
    try:
        from flannel_udp import _fastpath  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_datapath(choice: str | None = None) -> str:
    """``c`` or ``python`` for ``choice`` (default: the environment variable, else auto)."""
    wanted = (choice or os.environ.get(DATAPATH_ENV) or "auto").strip().lower()
    if wanted not in _CHOICES:
        raise BackendError(
            f"{DATAPATH_ENV}={wanted!r} is not one of {', '.join(_CHOICES)}; unset it or pick one"
        )
    if wanted == "auto":
        return "c" if fastpath_available() else "python"
    if wanted == "c" and not fastpath_available():
        raise BackendError(
            "udp C data path requested but flannel_udp._fastpath is not built; reinstall "
            f"flannel-udp with gcc and Python headers present, or set {DATAPATH_ENV}=python"
        )
    return wanted


def wants_offload(datapath: str) -> bool:
    """Open the TUN with a vnet header and TSO for this data path? (C only; env can veto.)"""
    return datapath == "c" and os.environ.get(OFFLOAD_ENV, "1").strip() not in ("0", "false", "no")


def make_forwarder(
    tun_fd: int, sock_fd: int, tun_addr: int, choice: str | None = None, offload: bool = False
) -> Forwarder:
    """A stopped forwarder between ``tun_fd`` and ``sock_fd``; ICMP errors come from tun_addr.
    ``offload`` must match how the TUN was opened (see :func:`wants_offload`)."""
    if resolve_datapath(choice) == "c":
        from flannel_udp._fastpath import Forwarder as CForwarder

        return CForwarder(tun_fd, sock_fd, tun_addr, offload=offload)
    if offload:
        raise BackendError("the Python data path cannot read a TUN opened with offload")
    from flannel_udp.pyforward import PyForwarder

    return PyForwarder(tun_fd, sock_fd, tun_addr)
