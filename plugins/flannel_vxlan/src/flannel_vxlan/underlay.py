"""Which peers sit on our L2 segment (for DirectRouting): batched ``ip route get``.

A peer is directly reachable when the kernel's route to its public IP has no gateway,
as flanneld decides it. All lookups go out in one batch, so thousands of peers cost one
round trip, not thousands.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from flannel.netlink.neigh import NetlinkRequest, RtnlSocket, nlattr, parse_attrs

__all__ = ["on_link_oifs"]

IPAddress = IPv4Address | IPv6Address

RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTN_UNICAST = 1
_RTMSG = struct.Struct("=BBBBBBBBI")


def on_link_oifs(sock: RtnlSocket, addresses: Iterable[IPAddress]) -> dict[IPAddress, int]:
    """Map each address whose route has no gateway to its outgoing interface index.

    Unreachable addresses, and those routed via a gateway, are left out.
    """
    ips = list(dict.fromkeys(addresses))
    requests = []
    for ip in ips:
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
        requests.append(NetlinkRequest(RTM_GETROUTE, 0, body + nlattr(RTA_DST, ip.packed)))
    result: dict[IPAddress, int] = {}
    for ip, reply in zip(ips, sock.request(requests), strict=True):
        for msg_type, body in reply.messages:
            if msg_type != RTM_NEWROUTE:
                continue
            rtm_type = _RTMSG.unpack_from(body, 0)[7]
            attrs = parse_attrs(body, _RTMSG.size)
            if rtm_type == RTN_UNICAST and RTA_GATEWAY not in attrs and RTA_OIF in attrs:
                result[ip] = struct.unpack("=I", attrs[RTA_OIF])[0]
    return result
