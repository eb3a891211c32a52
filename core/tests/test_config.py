"""Network config parsing: flanneld v0.20.2 defaults, Go JSON key rules, every validation error."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from flannel.config import ConfigError, NetworkConfig, parse_config
from flannel.lease import Lease


def cfg(**keys: Any) -> NetworkConfig:
    keys.setdefault("Backend", {"Type": "vxlan"})
    return parse_config(json.dumps(keys))


# --- flanneld's own unit cases (subnet/config_test.go) -------------------------------------


def test_upstream_defaults_with_lower_case_key() -> None:
    c = parse_config('{"network": "10.3.0.0/16"}')
    assert c.network == IPv4Network("10.3.0.0/16")
    assert c.subnet_len == 24
    assert c.subnet_min == IPv4Address("10.3.1.0")
    assert c.subnet_max == IPv4Address("10.3.255.0")
    assert c.enable_ipv4 is True
    assert c.enable_ipv6 is False
    assert c.ipv6_network is None


def test_upstream_overrides_kept() -> None:
    c = parse_config(
        '{"Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0",'
        ' "SubnetLen": 28, "Backend": {"Type": "udp"}}'
    )
    assert (c.subnet_min, c.subnet_max, c.subnet_len) == (
        IPv4Address("10.3.5.0"),
        IPv4Address("10.3.8.0"),
        28,
    )


def test_upstream_ipv6_defaults() -> None:
    c = cfg(Network="10.3.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48")
    assert c.ipv6_network == IPv6Network("fc00::/48")
    assert c.ipv6_subnet_len == 64
    assert c.ipv6_subnet_min == IPv6Address("fc00:0:0:1::")
    assert c.ipv6_subnet_max == IPv6Address("fc00:0:0:ffff::")


def test_upstream_ipv6_overrides_kept() -> None:
    c = cfg(
        Network="10.3.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48",
        IPv6SubnetMin="fc00::10", IPv6SubnetMax="fc00::f0", IPv6SubnetLen=124,
    )  # fmt: skip
    assert c.ipv6_subnet_len == 124
    assert c.ipv6_subnet_min == IPv6Address("fc00::10")
    assert c.ipv6_subnet_max == IPv6Address("fc00::f0")


# --- defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "length", "low", "high"),
    [
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.3.0.0/22", 24, "10.3.1.0", "10.3.3.0"),
        ("10.3.0.0/23", 25, "10.3.0.128", "10.3.1.128"),
        ("10.3.0.0/24", 26, "10.3.0.64", "10.3.0.192"),
        ("10.3.0.0/28", 30, "10.3.0.4", "10.3.0.12"),
    ],
)
def test_subnet_len_default(network: str, length: int, low: str, high: str) -> None:
    c = cfg(Network=network)
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (length, low, high)


@pytest.mark.parametrize(
    ("network", "length", "low", "high"),
    [
        ("fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),
        ("fc00::/62", 64, "fc00:0:0:1::", "fc00:0:0:3::"),
        ("fc00::/63", 65, "fc00::8000:0:0:0", "fc00:0:0:1:8000::"),
        ("fc00::/124", 126, "fc00::4", "fc00::c"),
    ],
)
def test_ipv6_subnet_len_default(network: str, length: int, low: str, high: str) -> None:
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network=network)
    assert (c.ipv6_subnet_len, str(c.ipv6_subnet_min), str(c.ipv6_subnet_max)) == (
        length,
        low,
        high,
    )
    assert c.network is None and c.subnet_len == 0 and c.subnet_size == 0


def test_host_bits_masked() -> None:
    c = cfg(Network="10.3.2.1/16", EnableIPv6=True, IPv6Network="fc00::1/48")
    assert c.network == IPv4Network("10.3.0.0/16")
    assert c.ipv6_network == IPv6Network("fc00::/48")


def test_keys_case_insensitive_and_unknown_ignored() -> None:
    c = parse_config(
        '{"NETWORK": "10.5.0.0/16", "subnetlen": 26, "enableipv6": true,'
        ' "ipv6network": "fc00::/48", "BACKEND": {"type": "Host-GW", "extra": 1},'
        ' "Whatever": [1, 2], "Comment": "ignored"}'
    )
    assert c.network == IPv4Network("10.5.0.0/16")
    assert c.subnet_len == 26
    assert c.enable_ipv6 and c.ipv6_network == IPv6Network("fc00::/48")
    assert c.backend_type == "host-gw"
    assert c.backend == {"type": "Host-GW", "extra": 1}


def test_key_matching_uses_unicode_folding_like_go() -> None:
    # Go's EqualFold maps the long s (U+017F) to "s" and the Kelvin sign (U+212A) to "k".
    c = parse_config(
        '{"Network": "10.5.0.0/16", "\u017fubnetLen": 26, "BAC\u212aEND": {"Type": "udp"}}'
    )
    assert c.subnet_len == 26 and c.backend_type == "udp"


def test_last_duplicate_key_wins() -> None:
    c = parse_config(
        '{"Network": "10.5.0.0/16", "network": "10.6.0.0/16", "Backend": {"Type": "x"}}'
    )
    assert c.network == IPv4Network("10.6.0.0/16")


def test_backend_type_lower_cased_and_raw_kept() -> None:
    raw = b'{"Network":"10.5.0.0/16","Backend":{"Type":"VXLAN","VNI":4}}'
    c = parse_config(raw)
    assert c.backend_type == "vxlan"
    assert c.backend == {"Type": "VXLAN", "VNI": 4}
    assert c.raw == raw
    assert parse_config(raw.decode()).raw == raw


def test_no_backend_is_udp_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flannel.config"):
        c = parse_config('{"Network": "10.5.0.0/16"}')
    assert c.backend_type == "udp"
    assert c.backend == {}
    assert any(r.name == "flannel.config" and "udp" in r.getMessage() for r in caplog.records)


def test_null_values_mean_default() -> None:
    c = parse_config(
        '{"Network": "10.5.0.0/16", "SubnetLen": null, "SubnetMin": null,'
        ' "EnableIPv6": null, "IPv6Network": null, "Backend": {"Type": "udp"}}'
    )
    assert c.subnet_len == 24 and c.subnet_min == IPv4Address("10.5.1.0")


def test_zero_values_mean_default_like_go() -> None:
    c = cfg(Network="10.5.0.0/16", SubnetLen=0, SubnetMin="0.0.0.0", SubnetMax="0.0.0.0")
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (24, "10.5.1.0", "10.5.255.0")


def test_dual_stack_and_networks_lists() -> None:
    c = cfg(
        Network="10.5.0.0/16", Networks=["10.6.0.0/16", "10.7.1.1/16"], EnableIPv6=True,
        IPv6Network="fd00::/56", IPv6Networks=["fd01::/56"], EnableNFTables=True,
    )  # fmt: skip
    assert c.networks == (IPv4Network("10.6.0.0/16"), IPv4Network("10.7.0.0/16"))
    assert c.flannel_network == IPv4Network("10.6.0.0/16")
    assert c.flannel_ipv6_network == IPv6Network("fd01::/56")
    assert c.enable_nftables is True
    plain = cfg(Network="10.5.0.0/16")
    assert plain.flannel_network == IPv4Network("10.5.0.0/16")
    assert plain.flannel_ipv6_network is None


def test_subnet_min_equal_max_is_one_subnet() -> None:
    c = cfg(Network="10.5.0.0/16", SubnetMin="10.5.7.0", SubnetMax="10.5.7.0")
    assert c.subnet_min == c.subnet_max == IPv4Address("10.5.7.0")


# --- helpers ------------------------------------------------------------------------------


def test_subnet_sizes() -> None:
    c = cfg(Network="10.5.0.0/16", SubnetLen=26, EnableIPv6=True, IPv6Network="fc00::/48")
    assert c.subnet_size == 64
    assert c.ipv6_subnet_size == 1 << 64
    assert cfg(Network="10.5.0.0/16").ipv6_subnet_size == 0


def test_contains_lease_v4() -> None:
    c = cfg(Network="10.3.0.0/16", SubnetMin="10.3.1.0", SubnetMax="10.3.25.0")
    assert c.contains_lease(Lease(IPv4Network("10.3.1.0/24")))
    assert c.contains_lease(Lease(IPv4Network("10.3.25.0/24")))
    assert not c.contains_lease(Lease(IPv4Network("10.3.26.0/24")))  # above max
    assert not c.contains_lease(Lease(IPv4Network("10.3.0.0/24")))  # below min
    assert not c.contains_lease(Lease(IPv4Network("10.3.2.0/25")))  # wrong prefix
    assert not c.contains_lease(Lease(IPv4Network("10.4.1.0/24")))  # other network
    assert not c.contains_lease(Lease(None, ipv6_subnet=IPv6Network("fc00:0:0:1::/64")))
    # IPv6 disabled: a lease carrying an IPv6 subnet does not fit.
    assert not c.contains_lease(
        Lease(IPv4Network("10.3.2.0/24"), ipv6_subnet=IPv6Network("fc00:0:0:1::/64"))
    )


def test_contains_lease_dual_and_v6_only() -> None:
    dual = cfg(Network="10.3.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48")
    v4, v6 = IPv4Network("10.3.2.0/24"), IPv6Network("fc00:0:0:2::/64")
    assert dual.contains_lease(Lease(v4, ipv6_subnet=v6))
    assert not dual.contains_lease(Lease(v4))
    assert not dual.contains_lease(Lease(v4, ipv6_subnet=IPv6Network("fc00::/64")))  # first
    assert not dual.contains_lease(Lease(v4, ipv6_subnet=IPv6Network("fc00:0:0:2::/80")))
    only6 = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48")
    assert only6.contains_lease(Lease(None, ipv6_subnet=v6))
    assert not only6.contains_lease(Lease(v4, ipv6_subnet=v6))
    assert only6.contains_subnet(None) and not dual.contains_subnet(None)


# --- every validation error ---------------------------------------------------------------

ERRORS: list[tuple[str, Any, list[str]]] = [
    # (case id, config document, substrings the one-line message must contain)
    ("bad-json", "{", ["not valid JSON"]),
    ("not-object", "[1, 2]", ["not a JSON object"]),
    ("network-missing", {}, ["Network is missing", "10.244.0.0/16"]),
    ("network-empty", {"Network": ""}, ["Network is missing"]),
    ("network-type", {"Network": 10}, ["Network 10", "JSON string"]),
    ("network-no-prefix", {"Network": "10.1.0.0"}, ['Network "10.1.0.0"', "IPv4 CIDR"]),
    ("network-garbage", {"Network": "ten/8"}, ['Network "ten/8"', "IPv4 CIDR"]),
    ("network-newline", {"Network": "10.0.0.0\n/8"}, ['Network "10.0.0.0\\n/8"']),
    ("network-is-v6", {"Network": "fc00::/48"}, ['Network "fc00::/48"', "IPv4 CIDR"]),
    ("network-netmask", {"Network": "10.0.0.0/255.0.0.0"}, ["IPv4 CIDR"]),
    ("network-prefix-33", {"Network": "10.0.0.0/33"}, ["IPv4 CIDR"]),
    ("network-leading-zero", {"Network": "010.0.0.0/8"}, ["IPv4 CIDR"]),
    ("network-everything", {"Network": "0.0.0.0/0"}, ["Network 0.0.0.0/0 covers every address"]),
    ("ipv6-network-everything", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                                 "IPv6Network": "::/0"}, ["IPv6Network ::/0 covers every"]),
    ("network-too-small", {"Network": "10.3.0.0/29"}, ["Network 10.3.0.0/29 is too small", "/28"]),
    ("subnetlen-string", {"Network": "10.3.0.0/16", "SubnetLen": "24"},
     ['SubnetLen "24"', "JSON integer", '"SubnetLen": 24']),
    ("subnetlen-float", {"Network": "10.3.0.0/16", "SubnetLen": 24.5}, ["SubnetLen 24.5"]),
    ("subnetlen-bool", {"Network": "10.3.0.0/16", "SubnetLen": True}, ["SubnetLen true"]),
    ("subnetlen-negative", {"Network": "10.3.0.0/16", "SubnetLen": -1}, ["SubnetLen -1"]),
    ("subnetlen-31", {"Network": "10.3.0.0/16", "SubnetLen": 31},
     ["SubnetLen 31", "10.3.0.0/16", "from 18 to 30"]),
    ("subnetlen-shorter-than-network", {"Network": "10.3.0.0/16", "SubnetLen": 8},
     ["SubnetLen 8", "from 18 to 30"]),
    ("subnetlen-only-two-subnets", {"Network": "10.3.0.0/16", "SubnetLen": 17},
     ["SubnetLen 17", "from 18 to 30"]),
    ("subnetmin-type", {"Network": "10.3.0.0/16", "SubnetMin": 5}, ["SubnetMin 5", "JSON string"]),
    ("subnetmin-garbage", {"Network": "10.3.0.0/16", "SubnetMin": "10.3.x.0"},
     ['SubnetMin "10.3.x.0"', "not an IPv4 address"]),
    ("subnetmin-cidr", {"Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0/24"},
     ["not an IPv4 address"]),
    ("subnetmin-outside", {"Network": "10.3.0.0/16", "SubnetMin": "10.4.1.0"},
     ["SubnetMin 10.4.1.0 is outside Network 10.3.0.0/16"]),
    ("subnetmax-outside", {"Network": "10.3.0.0/16", "SubnetMax": "10.2.255.0"},
     ["SubnetMax 10.2.255.0 is outside Network 10.3.0.0/16"]),
    ("subnetmin-unaligned", {"Network": "10.3.0.0/16", "SubnetMin": "10.3.1.5"},
     ["SubnetMin 10.3.1.5 is not on a /24 boundary", "use 10.3.1.0"]),
    ("subnetmax-unaligned", {"Network": "10.3.0.0/16", "SubnetLen": 26, "SubnetMax": "10.3.9.65"},
     ["SubnetMax 10.3.9.65 is not on a /26 boundary", "use 10.3.9.64"]),
    ("min-greater-than-max", {"Network": "10.3.0.0/16", "SubnetMin": "10.3.9.0",
                              "SubnetMax": "10.3.5.0"},
     ["SubnetMin 10.3.9.0 is greater than SubnetMax 10.3.5.0: swap them or remove both to use "
      "the defaults"]),
    ("max-below-default-min", {"Network": "10.3.0.0/16", "SubnetMax": "10.3.0.0"},
     ["SubnetMin 10.3.1.0 is greater than SubnetMax 10.3.0.0"]),
    ("enable-ipv4-type", {"Network": "10.3.0.0/16", "EnableIPv4": "true"},
     ['EnableIPv4 "true"', "true or false"]),
    ("enable-ipv6-type", {"Network": "10.3.0.0/16", "EnableIPv6": 1}, ["EnableIPv6 1"]),
    ("no-family", {"EnableIPv4": False}, ["EnableIPv4 false and EnableIPv6 false"]),
    ("v4-keys-when-v4-disabled", {"EnableIPv4": False, "EnableIPv6": True,
                                  "IPv6Network": "fc00::/48", "Network": "10.3.0.0/16"},
     ['Network "10.3.0.0/16" is set but EnableIPv4 is false']),
    ("v4-subnetlen-when-v4-disabled", {"EnableIPv4": False, "EnableIPv6": True,
                                       "IPv6Network": "fc00::/48", "SubnetLen": 24},
     ["SubnetLen 24 is set but EnableIPv4 is false"]),
    ("ipv6-network-when-v6-disabled", {"Network": "10.3.0.0/16", "IPv6Network": "fc00::/48"},
     ['IPv6Network "fc00::/48" is set but EnableIPv6 is false', '"EnableIPv6": true']),
    ("ipv6-min-when-v6-disabled", {"Network": "10.3.0.0/16", "EnableIPv6": False,
                                   "IPv6SubnetMin": "fc00:0:0:1::"},
     ["IPv6SubnetMin", "EnableIPv6 is false"]),
    ("ipv6-len-when-v6-disabled", {"Network": "10.3.0.0/16", "IPv6SubnetLen": 64},
     ["IPv6SubnetLen 64 is set but EnableIPv6 is false"]),
    ("ipv6-networks-when-v6-disabled", {"Network": "10.3.0.0/16", "IPv6Networks": ["fc00::/48"]},
     ["IPv6Networks", "EnableIPv6 is false"]),
    ("ipv6-network-missing", {"Network": "10.3.0.0/16", "EnableIPv6": True},
     ["IPv6Network is missing"]),
    ("ipv6-network-is-v4", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                            "IPv6Network": "10.4.0.0/16"}, ["IPv6 CIDR"]),
    ("ipv6-network-zone", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                           "IPv6Network": "fe80::%eth0/64"}, ["IPv6 CIDR"]),
    ("ipv6-network-too-small", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                                "IPv6Network": "fc00::/125"},
     ["IPv6Network fc00::/125 is too small", "/124"]),
    ("ipv6-subnetlen-127", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                            "IPv6Network": "fc00::/48", "IPv6SubnetLen": 127},
     ["IPv6SubnetLen 127", "from 50 to 126"]),
    ("ipv6-subnetlen-short", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                              "IPv6Network": "fc00::/48", "IPv6SubnetLen": 49},
     ["IPv6SubnetLen 49"]),
    ("ipv6-subnetlen-string", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                               "IPv6Network": "fc00::/48", "IPv6SubnetLen": "64"},
     ['IPv6SubnetLen "64"']),
    ("ipv6-min-garbage", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                          "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00::zz"},
     ['IPv6SubnetMin "fc00::zz" is not an IPv6 address']),
    ("ipv6-min-outside", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                          "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc01:0:0:1::"},
     ["IPv6SubnetMin fc01:0:0:1:: is outside IPv6Network fc00::/48"]),
    ("ipv6-max-unaligned", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                            "IPv6Network": "fc00::/48", "IPv6SubnetMax": "fc00:0:0:5::1"},
     ["IPv6SubnetMax fc00:0:0:5::1 is not on a /64 boundary", "use fc00:0:0:5::"]),
    ("ipv6-min-greater-than-max", {"Network": "10.3.0.0/16", "EnableIPv6": True,
                                   "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:9::",
                                   "IPv6SubnetMax": "fc00:0:0:5::"},
     ["IPv6SubnetMin fc00:0:0:9:: is greater than IPv6SubnetMax fc00:0:0:5::"]),
    ("networks-type", {"Network": "10.3.0.0/16", "Networks": "10.4.0.0/16"},
     ['Networks "10.4.0.0/16"', "list of strings"]),
    ("networks-bad-entry", {"Network": "10.3.0.0/16", "Networks": ["10.4.0.0"]},
     ['Networks "10.4.0.0" is not an IPv4 CIDR']),
    ("backend-not-object", {"Network": "10.3.0.0/16", "Backend": "vxlan"},
     ['Backend "vxlan" must be a JSON object']),
    ("backend-no-type", {"Network": "10.3.0.0/16", "Backend": {"VNI": 1}},
     ['Backend {"VNI": 1} has no Type', '"Type"']),
    ("backend-empty-type", {"Network": "10.3.0.0/16", "Backend": {"Type": ""}}, ["has no Type"]),
    ("backend-type-not-string", {"Network": "10.3.0.0/16", "Backend": {"Type": 3}},
     ["Backend.Type 3 must be a JSON string"]),
    ("nftables-type", {"Network": "10.3.0.0/16", "EnableNFTables": "yes"},
     ['EnableNFTables "yes"']),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_validation_error(doc: Any, expected: list[str]) -> None:
    raw = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    assert ":" in message, "errors say what to do after a colon"
    for part in expected:
        assert part in message


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
