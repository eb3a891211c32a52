"""IPv4 packet helpers of the pure-Python data path (the C extension mirrors them byte for byte).

Only what a forwarder between a TUN and a UDP socket needs: the TTL decrement with an
RFC 1624 incremental checksum update, and the ICMP net-unreachable flanneld writes back
into the TUN for destinations no lease owns.
"""

from __future__ import annotations

import struct

__all__ = [
    "ICMP_TTL",
    "MIN_IPV4_HEADER",
    "checksum",
    "decrement_ttl",
    "net_unreachable",
]

MIN_IPV4_HEADER = 20
ICMP_TTL = 8
"""TTL of the ICMP errors we originate (flanneld's value)."""

_ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def decrement_ttl(packet: bytearray) -> bool:
    """Decrement the TTL of an IPv4 packet in place; False means drop (TTL would reach 0).

    The header checksum is patched incrementally (RFC 1624: HC' = ~(~HC + ~m + m')), so the
    cost does not depend on the header length and a bad checksum stays bad.
    """
    ttl = packet[8]
    if ttl <= 1:
        return False
    proto = packet[9]
    old_word = (ttl << 8) | proto
    new_word = ((ttl - 1) << 8) | proto
    check = (packet[10] << 8) | packet[11]
    total = (~check & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    out = ~total & 0xFFFF
    packet[8] = ttl - 1
    packet[10] = out >> 8
    packet[11] = out & 0xFF
    return True


def _is_icmp_error(packet: bytes | bytearray, ihl: int) -> bool:
    if packet[9] != 1:
        return False
    if len(packet) <= ihl:
        return True  # truncated ICMP: never answer it
    return packet[ihl] in _ICMP_ERROR_TYPES


def net_unreachable(packet: bytes | bytearray, src: int) -> bytes | None:
    """ICMP destination unreachable / net unreachable (type 3 code 0) for ``packet``.

    ``src`` is the TUN address (an int). The error quotes the offending IP header plus
    8 bytes and goes back to the packet's source. None when no error may be sent: the
    offender is itself an ICMP error, a non-first fragment, or comes from 0.0.0.0 or a
    multicast address (RFC 1812 4.3.2.7).
    """
    if len(packet) < MIN_IPV4_HEADER:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < MIN_IPV4_HEADER or len(packet) < ihl:
        return None
    if ((packet[6] << 8) | packet[7]) & 0x1FFF:
        return None
    if _is_icmp_error(packet, ihl):
        return None
    offender_src = bytes(packet[12:16])
    if offender_src == b"\0\0\0\0" or offender_src[0] & 0xF0 == 0xE0:
        return None
    quoted = bytes(packet[: ihl + 8])
    total = 20 + 8 + len(quoted)
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ICMP_TTL, 1, 0,
                    src.to_bytes(4, "big"), offender_src)
    )  # fmt: skip
    header[10:12] = checksum(header).to_bytes(2, "big")
    icmp = bytearray(struct.pack("!BBHI", 3, 0, 0, 0) + quoted)
    icmp[2:4] = checksum(icmp).to_bytes(2, "big")
    return bytes(header + icmp)
