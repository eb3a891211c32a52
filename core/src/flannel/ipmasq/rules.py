"""The rule set flanneld installs for ``--ip-masq`` and ``--iptables-forward-rules``.

Pure data, no I/O: both drivers (iptables, nftables) render the same intent. The iptables
rules are flanneld v0.20.2's, in its order (an operator's ``iptables -S`` looks the same):

- ``nat POSTROUTING`` (inserted at the top): ``-m comment --comment "flanneld masq"
  -j FLANNEL-POSTRTG``
- ``FLANNEL-POSTRTG``: the kube-proxy mark RETURN; ``-s N -d N`` RETURN; ``-s N ! -d <mcast>``
  MASQUERADE; ``! -s N -d S`` RETURN; ``! -s N -d N`` MASQUERADE (``--random-fully`` when supported)
- ``filter FORWARD`` (top): ``-j FLANNEL-FWD``; ``FLANNEL-FWD``: ``-s N`` ACCEPT, ``-d N`` ACCEPT

N is the flannel network, S this host's lease subnet, mcast 224.0.0.0/4 or ff00::/8.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

__all__ = [
    "FORWARD_CHAIN",
    "FORWARD_COMMENT",
    "KUBE_PROXY_MARK",
    "MASQ_CHAIN",
    "MASQ_COMMENT",
    "FamilyRules",
    "Rule",
    "RuleSet",
    "build_rule_set",
]

MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"

IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Rule:
    """One iptables rule: ``-A|-I <chain> <spec...>`` in ``table``.

    ``spec`` is written exactly as ``iptables-save`` prints it back, so a saved table can
    be compared line by line without a per-rule ``-C`` call.
    """

    table: str
    chain: str
    spec: tuple[str, ...]
    insert: bool = False
    """True for the jump from a built-in chain, which goes to the top (``-I chain 1``)."""

    def save_line(self, action: str = "-A", position: int | None = None) -> str:
        """The rule as one ``iptables-save``/``iptables-restore`` line (comments quoted)."""
        where = [self.chain] if position is None else [self.chain, str(position)]
        return " ".join([action, *where, *(_quote(part) for part in self.spec)])


def _quote(part: str) -> str:
    return f'"{part}"' if " " in part else part


@dataclass(frozen=True)
class FamilyRules:
    """The rules of one address family (4 or 6); what both drivers render."""

    family: int
    network: IPNetwork
    subnet: IPNetwork | None
    masq: bool
    forward: bool
    random_fully: bool
    name: str = ""
    """The network's name in multi-network mode ("" = the default network): each network
    gets its own chains (``FLANNEL-POSTRTG-<name>``) so networks never rewrite each other's."""

    @property
    def masq_chain(self) -> str:
        return chain_name(MASQ_CHAIN, self.name)

    @property
    def forward_chain(self) -> str:
        return chain_name(FORWARD_CHAIN, self.name)

    @property
    def multicast(self) -> str:
        return "224.0.0.0/4" if self.family == 4 else "ff00::/8"

    def iptables_rules(self) -> list[Rule]:
        """flanneld v0.20.2's rules, in order; first the nat table, then filter."""
        rules: list[Rule] = []
        if self.masq:
            rules += masq_rules(
                self.network, self._subnet(), self.multicast, self.random_fully, self.masq_chain
            )
        if self.forward:
            rules += forward_rules(self.network, self.forward_chain)
        return rules

    def tables(self) -> list[str]:
        return [t for t, on in (("nat", self.masq), ("filter", self.forward)) if on]

    def _subnet(self) -> IPNetwork:
        if self.subnet is None:
            raise ValueError(
                f"IPv{self.family} masquerade needs this host's lease subnet: acquire the lease "
                "before applying the rules"
            )
        return self.subnet


def chain_name(base: str, name: str) -> str:
    """``base`` for the default network, ``base-<name>`` for a named one (iptables chain
    names have at most 28 characters: a long name is cut and given a hash suffix)."""
    if not name:
        return base
    if len(name) > 12:
        name = name[:7] + "-" + hashlib.sha1(name.encode()).hexdigest()[:4]
    return f"{base}-{name}"


def masq_rules(
    network: IPNetwork,
    subnet: IPNetwork,
    mcast: str,
    random_fully: bool,
    chain: str = MASQ_CHAIN,
) -> list[Rule]:
    n, s = str(network), str(subnet)
    comment = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")

    def rule(*spec: str) -> Rule:
        return Rule("nat", chain, spec)

    return [
        Rule("nat", "POSTROUTING", (*comment, "-j", chain), insert=True),
        # kube-proxy marks traffic it will masquerade itself; NATing twice breaks some kernels
        rule("-m", "mark", "--mark", KUBE_PROXY_MARK, *comment, "-j", "RETURN"),
        # pod to pod inside the overlay keeps its addresses
        rule("-s", n, "-d", n, *comment, "-j", "RETURN"),
        # pods leaving the overlay (not multicast) take the host's address
        rule("-s", n, "!", "-d", mcast, *comment, *masq),
        # external traffic to our own pods keeps its source
        rule("!", "-s", n, "-d", s, *comment, "-j", "RETURN"),
        # the host talking to remote pods uses its overlay address
        rule("!", "-s", n, "-d", n, *comment, *masq),
    ]


def forward_rules(network: IPNetwork, chain: str = FORWARD_CHAIN) -> list[Rule]:
    n = str(network)
    comment = ("-m", "comment", "--comment", FORWARD_COMMENT)
    return [
        Rule("filter", "FORWARD", (*comment, "-j", chain), insert=True),
        Rule("filter", chain, ("-s", n, *comment, "-j", "ACCEPT")),
        Rule("filter", chain, ("-d", n, *comment, "-j", "ACCEPT")),
    ]


@dataclass(frozen=True)
class RuleSet:
    """Everything to install, one entry per enabled family."""

    families: tuple[FamilyRules, ...]

    def __bool__(self) -> bool:
        return any(f.masq or f.forward for f in self.families)


def build_rule_set(
    network: IPv4Network | None,
    subnet: IPv4Network | None,
    ipv6_network: IPv6Network | None = None,
    ipv6_subnet: IPv6Network | None = None,
    *,
    masq: bool = True,
    forward: bool = True,
    random_fully: bool = True,
    name: str = "",
) -> RuleSet:
    """The rules for the enabled families (a family is enabled when its network is given).
    ``name``: the network's name in multi-network mode (its own chains and nft tables)."""
    families: list[FamilyRules] = []
    if network is not None:
        families.append(FamilyRules(4, network, subnet, masq, forward, random_fully, name))
    if ipv6_network is not None:
        families.append(
            FamilyRules(6, ipv6_network, ipv6_subnet, masq, forward, random_fully, name)
        )
    for fam in families:
        if fam.subnet is not None and not fam.subnet.subnet_of(fam.network):  # type: ignore[arg-type]
            raise ValueError(
                f"lease subnet {fam.subnet} is outside the flannel network {fam.network}: "
                "check the network config and the lease"
            )
        if masq:
            fam._subnet()
    return RuleSet(tuple(families))
