"""Open a TUN device with the stdlib (no pyroute2 needed for the fd itself)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

__all__ = ["TUNSETIFF", "open_tun"]

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
_IFNAMSIZ = 16


def open_tun(name: str, offload: bool = False) -> tuple[int, str]:
    """Open (creating if needed) TUN device ``name`` in the current namespace.

    Returns the non-blocking, close-on-exec fd and the kernel's name for the device. Packets
    are bare IP (IFF_NO_PI), as flanneld's flannel0. The device lives as long as the fd.
    ``offload``: every packet carries a virtio_net_hdr and the kernel may hand over TCP
    super-packets and partial checksums (only the C data path understands that).
    """
    if not name or len(name.encode()) >= _IFNAMSIZ:
        raise ValueError(f"TUN device name {name!r} must be 1..15 bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot open /dev/net/tun ({exc.strerror}); load the tun module and run as root",
        ) from None
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except OSError as exc:
        os.close(fd)
        hint = (
            "another process holds it; stop it or delete the device"
            if exc.errno == errno.EBUSY
            else "a non-TUN device of that name may exist; delete it"
        )
        raise OSError(
            exc.errno, f"cannot attach TUN device {name!r} ({exc.strerror}): {hint}"
        ) from None
    return fd, ifr[:_IFNAMSIZ].rstrip(b"\0").decode()
