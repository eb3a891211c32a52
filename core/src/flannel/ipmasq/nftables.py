"""The nftables driver: tables ``flannel-ipv4`` / ``flannel-ipv6`` written with ``nft -f``.

Layout as flannel HEAD (``EnableNFTables``): chain ``postrtg`` (nat, postrouting, srcnat)
and chain ``forward`` (filter, forward). The table is ours alone, so one script replaces it
atomically (``add``+``delete``+define in one transaction) and teardown deletes it.

The masquerade rules carry the same intent and order as the iptables driver (flanneld
v0.20.2). Two deliberate differences from HEAD's nft rules: the kube-proxy mark is tested
as a bit (``meta mark & 0x4000 == 0x4000``, as iptables' ``--mark 0x4000/0x4000``), and
HEAD's ``saddr != S daddr N return`` (which makes its last masquerade rule unreachable, so
the host talking to remote pods is not masqueraded) is not copied.
"""

from __future__ import annotations

import logging

from flannel.ipmasq.rules import FORWARD_COMMENT, MASQ_COMMENT, FamilyRules, RuleSet
from flannel.ipmasq.runner import CommandError, Runner, run_command

__all__ = ["NftablesDriver", "render_table", "table_name"]

log = logging.getLogger(__name__)


def table_name(family: int, name: str = "") -> str:
    """``flannel-ipv4``; ``flannel-ipv4-<name>`` for a named network (multi-network mode)."""
    return f"flannel-ipv{family}" + (f"-{name}" if name else "")


def _nft_family(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def render_table(fam: FamilyRules) -> str:
    """The table exactly as ``nft list table`` prints it back (tabs, no handles)."""
    f = _nft_family(fam.family)
    n = str(fam.network)
    masq_c = f'comment "{MASQ_COMMENT}"'
    fwd_c = f'comment "{FORWARD_COMMENT}"'
    masquerade = "masquerade fully-random" if fam.random_fully else "masquerade"
    name = table_name(fam.family, fam.name)
    chains: list[list[str]] = []
    if fam.masq:
        s = str(fam.subnet)
        chains.append([
            "chain postrtg {",
            '\tcomment "chain to manage traffic masquerading by flannel"',
            "\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\tmeta mark & 0x00004000 == 0x00004000 return {masq_c}",
            f"\t{f} saddr {n} {f} daddr {n} return {masq_c}",
            f"\t{f} saddr {n} {f} daddr != {fam.multicast} {masquerade} {masq_c}",
            f"\t{f} saddr != {n} {f} daddr {s} return {masq_c}",
            f"\t{f} saddr != {n} {f} daddr {n} {masquerade} {masq_c}",
            "}",
        ])  # fmt: skip
    if fam.forward:
        chains.append([
            "chain forward {",
            '\tcomment "chain to accept flannel traffic"',
            "\ttype filter hook forward priority filter; policy accept;",
            f"\t{f} saddr {n} accept {fwd_c}",
            f"\t{f} daddr {n} accept {fwd_c}",
            "}",
        ])  # fmt: skip
    body: list[str] = [f"table {f} {name} {{", f'\tcomment "rules for {name}"']
    for i, chain in enumerate(chains):
        if i:
            body.append("")
        body += ["\t" + line for line in chain]
    body.append("}")
    return "\n".join(body) + "\n"


def _normal(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


class NftablesDriver:
    """Installs a :class:`RuleSet` as nftables tables of our own."""

    name = "nftables"

    def __init__(self, runner: Runner = run_command) -> None:
        self.runner = runner
        self._expected: dict[int, str] = {}
        """What ``nft list table`` showed right after our last apply, per family."""

    def describe(self) -> str:
        return "nftables"

    async def available(self) -> bool:
        result = await self.runner(["nft", "--version"], None)
        return result.returncode == 0

    async def random_fully(self, family: int = 4) -> bool:
        """Ask nft to check (not apply) a fully-random masquerade rule."""
        f = _nft_family(family)
        probe = (
            f"table {f} flannel-probe {{\n chain p {{\n"
            "  type nat hook postrouting priority srcnat;\n  masquerade fully-random\n }\n}\n"
        )
        result = await self.runner(["nft", "-c", "-f", "-"], probe)
        return result.returncode == 0

    async def _list(self, family: int, name: str = "") -> str | None:
        argv = ["nft", "list", "table", _nft_family(family), table_name(family, name)]
        result = await self.runner(argv, None)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return None
            raise CommandError(result)
        return result.stdout

    async def _run_script(self, script: str) -> None:
        log.debug("nft -f", extra={"script": script})
        result = await self.runner(["nft", "-f", "-"], script)
        if result.returncode != 0:
            raise CommandError(result)

    # -- the driver interface --------------------------------------------------------------

    async def missing(self, rule_set: RuleSet) -> list[str]:
        problems: list[str] = []
        for fam in rule_set.families:
            if not (fam.masq or fam.forward):
                continue
            listed = await self._list(fam.family, fam.name)
            name = f"{_nft_family(fam.family)} {table_name(fam.family, fam.name)}"
            if listed is None:
                problems.append(f"table {name} is missing")
                continue
            want = self._expected.get(fam.family, _normal(render_table(fam)))
            if _normal(listed) != want:
                problems.append(f"table {name} differs from what flannel wrote")
        return problems

    async def apply(self, rule_set: RuleSet, only: tuple[int, ...] = ()) -> None:
        for fam in rule_set.families:
            if only and fam.family not in only:
                continue
            f, name = _nft_family(fam.family), table_name(fam.family, fam.name)
            script = f"add table {f} {name}\ndelete table {f} {name}\n"
            if fam.masq or fam.forward:
                script += render_table(fam)
            await self._run_script(script)
            listed = await self._list(fam.family, fam.name)
            if listed is not None:
                got, want = _normal(listed), _normal(render_table(fam))
                if got != want:  # another nft version formats differently: trust what it says
                    log.debug("nft lists the table differently", extra={"listed": listed})
                self._expected[fam.family] = got

    async def repair(self, rule_set: RuleSet) -> list[str]:
        problems: list[str] = []
        broken: list[int] = []
        for fam in rule_set.families:
            found = await self.missing(RuleSet((fam,)))
            if found:
                problems += found
                broken.append(fam.family)
        if broken:
            await self.apply(rule_set, only=tuple(broken))
        return problems

    async def teardown(self, rule_set: RuleSet) -> None:
        for fam in rule_set.families:
            if await self._list(fam.family, fam.name) is None:
                continue
            f, name = _nft_family(fam.family), table_name(fam.family, fam.name)
            await self._run_script(f"delete table {f} {name}\n")
            self._expected.pop(fam.family, None)
