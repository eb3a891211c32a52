"""Pure tests of the rule set and the iptables-restore payloads (no firewall touched)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from flannel.ipmasq.iptables import _build_payload, _table_problems, _teardown_payload, parse_save
from flannel.ipmasq.nftables import render_table
from flannel.ipmasq.rules import build_rule_set

N = IPv4Network("10.244.0.0/16")
S = IPv4Network("10.244.1.0/24")
N6 = IPv6Network("fd00:10::/56")
S6 = IPv6Network("fd00:10:0:5::/64")

# flanneld v0.20.2 with --random-fully support, as the k8s functional test expects.
C = '-m comment --comment "flanneld masq"'
V4_NAT = [
    f"-A POSTROUTING {C} -j FLANNEL-POSTRTG",
    f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {C} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 {C} -j RETURN",
    f"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {C} -j MASQUERADE --random-fully",
    f"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 {C} -j RETURN",
    f"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {C} -j MASQUERADE --random-fully",
]
V4_FILTER = [
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
]


def test_v4_rules_match_flanneld_order() -> None:
    (fam,) = build_rule_set(N, S).families
    assert [r.save_line() for r in fam.iptables_rules()] == V4_NAT + V4_FILTER
    assert [r.insert for r in fam.iptables_rules()] == [True, *[False] * 5, True, False, False]


def test_without_random_fully_and_v6_multicast() -> None:
    rule_set = build_rule_set(None, None, N6, S6, random_fully=False, forward=False)
    (fam,) = rule_set.families
    lines = [r.save_line() for r in fam.iptables_rules()]
    assert all("--random-fully" not in line for line in lines)
    assert lines[3] == (
        '-A FLANNEL-POSTRTG -s fd00:10::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" '
        "-j MASQUERADE"
    )
    assert lines[4].startswith("-A FLANNEL-POSTRTG ! -s fd00:10::/56 -d fd00:10:0:5::/64 ")
    assert fam.tables() == ["nat"]


def test_dual_stack_gives_two_families() -> None:
    rule_set = build_rule_set(N, S, N6, S6)
    assert [f.family for f in rule_set.families] == [4, 6]


def test_masq_needs_a_lease_subnet_and_it_must_be_inside() -> None:
    with pytest.raises(ValueError, match="lease subnet"):
        build_rule_set(N, None)
    with pytest.raises(ValueError, match=r"10\.9\.1\.0/24 is outside the flannel network"):
        build_rule_set(N, IPv4Network("10.9.1.0/24"))
    # forward rules alone need no subnet
    assert build_rule_set(N, None, masq=False).families[0].tables() == ["filter"]


def test_payload_declares_chain_replaces_jump_and_quotes_comments() -> None:
    (fam,) = build_rule_set(N, S).families
    nat = [r for r in fam.iptables_rules() if r.table == "nat"]
    state = parse_save("*nat\n:POSTROUTING ACCEPT [0:0]\n" + V4_NAT[0] + "\nCOMMIT\n")
    payload = _build_payload("nat", nat, state).splitlines()
    assert payload[0] == "*nat"
    assert payload[1] == ":FLANNEL-POSTRTG - [0:0]"
    assert payload[2] == '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    assert payload[3] == '-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    assert payload[4:9] == V4_NAT[1:]
    assert payload[-1] == "COMMIT"
    fresh = _build_payload("nat", nat, parse_save("")).splitlines()
    assert not any(line.startswith("-D") for line in fresh)


def test_problems_found_and_none_when_exact() -> None:
    (fam,) = build_rule_set(N, S).families
    exact = parse_save(":POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\n" + "\n".join(V4_NAT))
    assert _table_problems(fam, "nat", exact) == []
    no_jump = parse_save(":FLANNEL-POSTRTG - [0:0]\n" + "\n".join(V4_NAT[1:]))
    assert "jump" in _table_problems(fam, "nat", no_jump)[0]
    one_gone = parse_save(":FLANNEL-POSTRTG - [0:0]\n" + "\n".join(V4_NAT[:3] + V4_NAT[4:]))
    assert "224.0.0.0/4" in _table_problems(fam, "nat", one_gone)[0]
    assert "chain FLANNEL-POSTRTG is missing" in _table_problems(fam, "nat", parse_save(""))[0]


def test_teardown_payload_removes_every_jump_then_the_chain() -> None:
    (fam,) = build_rule_set(N, S).families
    nat = [r for r in fam.iptables_rules() if r.table == "nat"]
    saved = ":FLANNEL-POSTRTG - [0:0]\n" + "\n".join([*V4_NAT, "-A OUTPUT -j FLANNEL-POSTRTG"])
    lines = _teardown_payload("nat", nat, parse_save(saved)).splitlines()
    assert lines == [
        "*nat",
        '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        "-D OUTPUT -j FLANNEL-POSTRTG",
        ":FLANNEL-POSTRTG - [0:0]",
        "-X FLANNEL-POSTRTG",
        "COMMIT",
    ]
    assert _teardown_payload("nat", nat, parse_save(":POSTROUTING ACCEPT [0:0]")) == ""


def test_nft_render_has_both_chains() -> None:
    (fam,) = build_rule_set(N, S).families
    text = render_table(fam)
    assert text.startswith("table ip flannel-ipv4 {\n")
    assert "\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return" in text
    assert "chain forward {" in text and "chain postrtg {" in text
