"""The vxlan ``Backend`` options, decoded as flanneld does (keys case-insensitive).

Stricter than Go: a wrong type or an out-of-range value is a :class:`BackendConfigError`
naming the key and the value instead of a JSON decode error or a kernel EINVAL later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend import BackendConfigError

__all__ = [
    "DEFAULT_PORT",
    "OVERHEAD_V4",
    "OVERHEAD_V6",
    "VxlanOptions",
    "parse_options",
]

DEFAULT_PORT = 8472
"""What the kernel uses when no port is given (Port 0)."""
OVERHEAD_V4 = 50
"""Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)."""
OVERHEAD_V6 = 70
"""Outer IPv6 (40) instead of IPv4."""
MAX_VNI = (1 << 24) - 1
DEFAULT_RECONCILE_INTERVAL = 10.0


@dataclass(frozen=True)
class VxlanOptions:
    vni: int = 1
    port: int = 0
    """UDP destination port; 0 means the kernel default (8472)."""
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int | None = None
    """Device MTU and FLANNEL_MTU; None means iface MTU - 50 (- 70 on an IPv6 underlay)."""
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORT


def _bad(key: str, value: Any, want: str) -> BackendConfigError:
    return BackendConfigError(
        f"Backend.{key} must be {want}, got {value!r}: fix the vxlan options in the network config"
    )


def _int(key: str, value: Any, low: int, high: int) -> int:
    # Go decodes JSON numbers into int: 1.0 is accepted, 1.5 and "1" are not.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, value, f"an integer in {low}..{high}")
    if isinstance(value, float) and not value.is_integer():
        raise _bad(key, value, f"an integer in {low}..{high}")
    number = int(value)
    if not low <= number <= high:
        raise _bad(key, value, f"an integer in {low}..{high}")
    return number


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def parse_options(backend: Mapping[str, Any]) -> VxlanOptions:
    """Decode the ``Backend`` object. Unknown keys are ignored, as in flanneld."""
    keys = {str(k).lower(): v for k, v in backend.items()}
    interval = keys.get("reconcileinterval", DEFAULT_RECONCILE_INTERVAL)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not 0 < interval <= 86400
    ):
        raise _bad("ReconcileInterval", interval, "a number of seconds in (0, 86400]")
    mtu = keys.get("mtu")
    return VxlanOptions(
        vni=_int("VNI", keys.get("vni", 1), 0, MAX_VNI),
        port=_int("Port", keys.get("port", 0), 0, 65535),
        gbp=_bool("GBP", keys.get("gbp", False)),
        learning=_bool("Learning", keys.get("learning", False)),
        direct_routing=_bool("DirectRouting", keys.get("directrouting", False)),
        mtu=None if mtu in (None, 0) else _int("MTU", mtu, 68, 65535),
        reconcile_interval=float(interval),
    )


def device_mtu(options: VxlanOptions, iface_name: str, iface_mtu: int, ipv6_underlay: bool) -> int:
    """The vxlan device MTU for one underlay family; refuses an MTU that cannot fit."""
    overhead = OVERHEAD_V6 if ipv6_underlay else OVERHEAD_V4
    limit = iface_mtu - overhead
    if options.mtu is None:
        return limit
    if options.mtu > limit:
        raise BackendConfigError(
            f"Backend.MTU {options.mtu} does not fit interface {iface_name} (MTU {iface_mtu}) "
            f"with {overhead} bytes of vxlan overhead: use at most {limit} or leave MTU unset"
        )
    if ipv6_underlay and options.mtu < 1280:
        raise BackendConfigError(
            f"Backend.MTU {options.mtu} is below IPv6's minimum 1280 for the IPv6 vxlan device: "
            "use at least 1280"
        )
    return options.mtu
