"""Option decoding (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from flannel.backend import BackendConfigError
from flannel_vxlan.options import VxlanOptions, device_mtu, parse_options


def test_defaults() -> None:
    assert parse_options({"Type": "vxlan"}) == VxlanOptions()
    assert VxlanOptions().effective_port == 8472


def test_keys_are_case_insensitive_like_go() -> None:
    opts = parse_options(
        {"type": "vxlan", "vni": 4096, "PORT": 4789, "gbp": True, "learning": True,
         "directrouting": True, "mtu": 1400, "reconcileinterval": 2}
    )  # fmt: skip
    assert opts == VxlanOptions(
        vni=4096, port=4789, gbp=True, learning=True, direct_routing=True, mtu=1400,
        reconcile_interval=2.0,
    )  # fmt: skip


def test_vni_above_uint16_is_kept() -> None:
    assert parse_options({"VNI": 70000}).vni == 70000


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("VNI", "1"),
        ("VNI", 1.5),
        ("VNI", -1),
        ("VNI", 1 << 24),
        ("VNI", True),
        ("Port", 70000),
        ("Port", "8472"),
        ("GBP", "yes"),
        ("Learning", 1),
        ("DirectRouting", "true"),
        ("MTU", 20),
        ("MTU", "1400"),
        ("ReconcileInterval", 0),
        ("ReconcileInterval", "10"),
    ],
)
def test_bad_values_name_key_and_value(key: str, value: Any) -> None:
    with pytest.raises(BackendConfigError) as info:
        parse_options({key: value})
    assert f"Backend.{key}" in str(info.value)
    assert repr(value) in str(info.value)


def test_mtu_defaults_per_underlay_family() -> None:
    opts = VxlanOptions()
    assert device_mtu(opts, "eth0", 1500, ipv6_underlay=False) == 1450
    assert device_mtu(opts, "eth0", 1500, ipv6_underlay=True) == 1430
    assert device_mtu(VxlanOptions(mtu=1400), "eth0", 1500, ipv6_underlay=False) == 1400


def test_mtu_too_large_for_interface() -> None:
    with pytest.raises(BackendConfigError, match="use at most 1450"):
        device_mtu(VxlanOptions(mtu=1500), "eth0", 1500, ipv6_underlay=False)
