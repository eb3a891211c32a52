"""Packet helpers: TTL decrement (RFC 1624) and ICMP net-unreachable, C and Python alike."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel_udp import packet
from flannel_udp.datapath import fastpath_available

TUN_ADDR = 0x0AF40100  # 10.244.1.0


def ipv4(
    *, src: str = "10.244.1.5", dst: str = "10.244.2.7", ttl: int = 64, proto: int = 17,
    payload: bytes = b"12345678abcdefgh", frag: int = 0, options: bytes = b"",
) -> bytes:  # fmt: skip
    """A valid IPv4 packet with a correct header checksum."""
    ihl = 5 + len(options) // 4
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 0x1234, frag, ttl,
                    proto, 0, bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
        + options
    )  # fmt: skip
    header[10:12] = packet.checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def py_dec(data: bytes) -> bytes | None:
    buf = bytearray(data)
    return bytes(buf) if packet.decrement_ttl(buf) else None


IMPLS: list[tuple[str, Callable[[bytes], bytes | None], Callable[[bytes, int], bytes | None]]] = [
    ("python", py_dec, packet.net_unreachable)
]
if fastpath_available():
    from flannel_udp import _fastpath

    IMPLS.append(("c", _fastpath.decrement_ttl, _fastpath.net_unreachable))


def test_c_extension_is_built() -> None:
    """The editable install must have compiled the C data path on this machine."""
    assert fastpath_available()


@pytest.mark.parametrize(("name", "dec", "unreach"), IMPLS, ids=[i[0] for i in IMPLS])
class TestHelpers:
    def test_ttl_decrements_and_checksum_stays_valid(self, name, dec, unreach) -> None:  # type: ignore[no-untyped-def]
        out = dec(ipv4(ttl=64))
        assert out is not None
        assert out[8] == 63
        assert packet.checksum(out[:20]) == 0
        assert out[20:] == b"12345678abcdefgh"

    @pytest.mark.parametrize("ttl", [0, 1])
    def test_ttl_at_or_below_one_is_dropped(self, name, dec, unreach, ttl: int) -> None:  # type: ignore[no-untyped-def]
        assert dec(ipv4(ttl=ttl)) is None

    @given(
        ttl=st.integers(2, 255),
        proto=st.integers(0, 255),
        tos_id=st.integers(0, 0xFFFF),
        src=st.ip_addresses(v=4),
        dst=st.ip_addresses(v=4),
    )
    def test_incremental_checksum_equals_full_recompute(  # type: ignore[no-untyped-def]
        self, name, dec, unreach, ttl, proto, tos_id, src, dst
    ) -> None:
        raw = bytearray(ipv4(src=str(src), dst=str(dst), ttl=ttl, proto=proto))
        raw[4:6] = tos_id.to_bytes(2, "big")
        raw[10:12] = b"\0\0"
        raw[10:12] = packet.checksum(raw[:20]).to_bytes(2, "big")
        out = dec(bytes(raw))
        assert out is not None
        expect = bytearray(raw[:20])
        expect[8] = ttl - 1
        expect[10:12] = b"\0\0"
        assert int.from_bytes(out[10:12], "big") == packet.checksum(expect) or (
            # RFC 1624: 0x0000 and 0xffff are the same value in one's complement
            {int.from_bytes(out[10:12], "big"), packet.checksum(expect)} == {0, 0xFFFF}
        )

    def test_net_unreachable_layout(self, name, dec, unreach) -> None:  # type: ignore[no-untyped-def]
        offender = ipv4(src="10.244.1.5", dst="10.244.9.9", payload=b"ABCDEFGHIJKLMNOP")
        icmp = unreach(offender, TUN_ADDR)
        assert icmp is not None
        assert len(icmp) == 20 + 8 + 20 + 8
        assert icmp[0] == 0x45 and icmp[9] == 1 and icmp[8] == packet.ICMP_TTL
        assert struct.unpack("!H", icmp[2:4])[0] == len(icmp)
        assert icmp[12:16] == bytes([10, 244, 1, 0])  # from the TUN address
        assert icmp[16:20] == bytes([10, 244, 1, 5])  # back to the sender
        assert packet.checksum(icmp[:20]) == 0
        assert (icmp[20], icmp[21]) == (3, 0)
        assert packet.checksum(icmp[20:]) == 0
        assert icmp[28:] == offender[:28]  # offending header + 8 bytes

    def test_net_unreachable_quotes_ip_options(self, name, dec, unreach) -> None:  # type: ignore[no-untyped-def]
        offender = ipv4(options=b"\x01\x01\x01\x00", payload=b"x" * 40)
        icmp = unreach(offender, TUN_ADDR)
        assert icmp is not None and icmp[28:] == offender[: 24 + 8]

    @pytest.mark.parametrize(
        "offender",
        [
            ipv4(proto=1, payload=bytes([3, 1, 0, 0]) + b"\0" * 12),  # ICMP unreachable
            ipv4(proto=1, payload=bytes([11, 0, 0, 0]) + b"\0" * 12),  # time exceeded
            ipv4(frag=100),  # non-first fragment
            ipv4(src="0.0.0.0"),
            ipv4(src="224.0.0.5"),
            b"\x45" + b"\0" * 10,  # too short
        ],
        ids=["icmp-unreach", "icmp-time-exceeded", "fragment", "src-any", "src-multicast", "short"],
    )
    def test_no_error_about_errors_or_fragments(self, name, dec, unreach, offender: bytes) -> None:  # type: ignore[no-untyped-def]
        assert unreach(offender, TUN_ADDR) is None

    def test_echo_request_gets_an_error(self, name, dec, unreach) -> None:  # type: ignore[no-untyped-def]
        assert unreach(ipv4(proto=1, payload=bytes([8, 0, 0, 0]) + b"\0" * 12), TUN_ADDR)


@pytest.mark.skipif(not fastpath_available(), reason="C extension not built")
@given(data=st.binary(min_size=20, max_size=80), src=st.integers(0, 2**32 - 1))
def test_c_and_python_build_identical_bytes(data: bytes, src: int) -> None:
    raw = bytearray(data)
    raw[0] = 0x40 | (5 + (raw[0] % 3))
    py = packet.net_unreachable(bytes(raw), src)
    assert _fastpath.net_unreachable(bytes(raw), src) == py
    assert _fastpath.decrement_ttl(bytes(raw)) == py_dec(bytes(raw))
