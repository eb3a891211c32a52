"""Configure flannel0 (MTU, address, up, the route for the whole Network) over netlink.

Blocking pyroute2 calls: run them with ``asyncio.to_thread``. pyroute2 is imported here,
lazily, so loading the plugin stays cheap.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network

__all__ = ["accept_local", "configure_tun"]

_EEXIST = 17


def configure_tun(name: str, mtu: int, address: IPv4Address, network: IPv4Network) -> int:
    """Set MTU, make ``address/32`` the only IPv4 address, bring the link up and route
    ``network`` through it. Returns the link index."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise OSError(f"TUN device {name!r} vanished before it could be configured")
        index = int(links[0])
        ipr.link("set", index=index, mtu=mtu)
        for addr in ipr.addr("dump", index=index, family=socket.AF_INET):
            if addr.get("address") != str(address) or addr["prefixlen"] != 32:
                ipr.addr(
                    "del", index=index, address=addr.get("address"), prefixlen=addr["prefixlen"]
                )
        try:
            ipr.addr("add", index=index, address=str(address), prefixlen=32)
        except NetlinkError as exc:
            if exc.code != _EEXIST:
                raise
        ipr.link("set", index=index, state="up")
        ipr.route(
            "replace",
            dst=str(network.network_address),
            dst_len=network.prefixlen,
            oif=index,
        )
    accept_local(name)
    return index


def accept_local(name: str) -> None:
    """Let flannel0 accept packets whose source is one of our addresses.

    Our ICMP net-unreachable comes from the TUN address (as flanneld's); Linux drops
    packets arriving with a local source ("martian") unless accept_local is set, so without
    this the error never reaches the sender.
    """
    path = f"/proc/sys/net/ipv4/conf/{name}/accept_local"
    try:
        with open(path, "w") as conf:
            conf.write("1\n")
    except OSError as exc:
        raise OSError(exc.errno, f"cannot set {path} ({exc.strerror}); run as root") from None
