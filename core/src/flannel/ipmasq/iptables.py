"""The iptables driver: one ``iptables-restore --noflush`` batch per table and family.

Reads use one ``iptables-save -t TABLE`` per table (not a ``-C`` per rule). Our own chains
(FLANNEL-POSTRTG, FLANNEL-FWD) are declared in the batch, which creates or flushes them, so
a rebuild is atomic and also drops rules left from an old network. The jump from the
built-in chain is deleted (every copy) and re-inserted at the top in the same batch.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from flannel.ipmasq.rules import FamilyRules, Rule, RuleSet
from flannel.ipmasq.runner import CommandError, Runner, run_command

__all__ = ["IptablesDriver", "TableState", "parse_save"]

log = logging.getLogger(__name__)

_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass
class TableState:
    """One table as ``iptables-save`` printed it: chains and each chain's rule lines."""

    chains: set[str]
    rules: dict[str, list[str]]

    def has_line(self, rule: Rule) -> int:
        """How many copies of ``rule`` the chain holds."""
        return self.rules.get(rule.chain, []).count(rule.save_line())


def parse_save(text: str) -> TableState:
    """Parse ``iptables-save -t TABLE`` output (one table)."""
    chains: set[str] = set()
    rules: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        if line.startswith(":"):
            chains.add(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            rules[chain].append(line)
    return TableState(chains, dict(rules))


class IptablesDriver:
    """Installs a :class:`RuleSet` with iptables.

    ``variant``: "" for the system's default binaries, "nft" or "legacy" for that one.
    """

    name = "iptables"

    def __init__(self, runner: Runner = run_command, variant: str = "") -> None:
        if variant not in ("", "nft", "legacy"):
            raise ValueError(f"iptables variant {variant!r} is unknown: use nft, legacy or ''")
        self.runner = runner
        self.variant = variant

    def describe(self) -> str:
        return f"iptables-{self.variant}" if self.variant else "iptables"

    def tool(self, family: int, tool: str = "") -> str:
        base = "iptables" if family == 4 else "ip6tables"
        parts = [base, *([self.variant] if self.variant else []), *([tool] if tool else [])]
        return "-".join(parts)

    async def random_fully(self, family: int = 4) -> bool:
        """``--random-fully`` needs iptables >= 1.6.2 (what flanneld's go-iptables checks)."""
        result = await self.runner([self.tool(family), "--version"], None)
        match = _VERSION.search(result.stdout + result.stderr)
        if result.returncode != 0 or match is None:
            return False
        return tuple(int(x) for x in match.groups()) >= (1, 6, 2)

    async def available(self) -> bool:
        result = await self.runner([self.tool(4, "restore"), "--help"], None)
        return result.returncode != 127

    async def read(self, family: int, table: str) -> TableState:
        result = await self.runner([self.tool(family, "save"), "-t", table], None)
        return parse_save(result.check().stdout)

    # -- the driver interface --------------------------------------------------------------

    async def missing(self, rule_set: RuleSet) -> list[str]:
        """What is not in place (empty when everything is); reads only."""
        problems: list[str] = []
        for fam in rule_set.families:
            for table in fam.tables():
                state = await self.read(fam.family, table)
                problems += _table_problems(fam, table, state)
        return problems

    async def apply(self, rule_set: RuleSet, only: Sequence[tuple[int, str]] = ()) -> None:
        """(Re)build every table of ``rule_set`` (or just the ``(family, table)`` pairs given)."""
        for fam in rule_set.families:
            for table in fam.tables():
                if only and (fam.family, table) not in only:
                    continue
                state = await self.read(fam.family, table)
                rules = [r for r in fam.iptables_rules() if r.table == table]
                await self._restore(fam.family, table, _build_payload(table, rules, state))

    async def repair(self, rule_set: RuleSet) -> list[str]:
        """Rebuild the tables that drifted; returns what was wrong (empty: nothing written)."""
        problems: list[str] = []
        broken: list[tuple[int, str]] = []
        for fam in rule_set.families:
            for table in fam.tables():
                found = _table_problems(fam, table, await self.read(fam.family, table))
                if found:
                    problems += found
                    broken.append((fam.family, table))
        if broken:
            await self.apply(rule_set, only=broken)
        return problems

    async def teardown(self, rule_set: RuleSet) -> None:
        """Remove our jumps and chains; leaves everything else alone. Idempotent."""
        for fam in rule_set.families:
            for table in fam.tables():
                state = await self.read(fam.family, table)
                rules = [r for r in fam.iptables_rules() if r.table == table]
                payload = _teardown_payload(table, rules, state)
                if payload:
                    await self._restore(fam.family, table, payload)

    async def _restore(self, family: int, table: str, payload: str) -> None:
        argv = [self.tool(family, "restore"), "--noflush", "--wait"]
        log.debug("iptables-restore", extra={"table": table, "family": family, "payload": payload})
        result = await self.runner(argv, payload)
        if result.returncode != 0:
            raise CommandError(result)


def _chain_of(rules: list[Rule]) -> str:
    return next(r.chain for r in rules if not r.insert)


def _table_problems(fam: FamilyRules, table: str, state: TableState) -> list[str]:
    rules = [r for r in fam.iptables_rules() if r.table == table]
    chain = _chain_of(rules)
    where = f"ipv{fam.family} {table}"
    if chain not in state.chains:
        return [f"{where}: chain {chain} is missing"]
    problems = [
        f"{where}: jump {rule.save_line()!r} is missing"
        for rule in rules
        if rule.insert and not state.has_line(rule)
    ]
    want = [r.save_line() for r in rules if not r.insert]
    have = state.rules.get(chain, [])
    if have != want:
        gone = [line for line in want if line not in have]
        extra = [line for line in have if line not in want]
        detail = f"missing {gone}" if gone else ""
        detail += ("; " if detail else "") + (f"unexpected {extra}" if extra else "")
        problems.append(f"{where}: chain {chain} differs: {detail or 'order changed'}")
    return problems


def _build_payload(table: str, rules: list[Rule], state: TableState) -> str:
    lines = [f"*{table}", f":{_chain_of(rules)} - [0:0]"]  # creates or flushes our chain
    for rule in rules:
        if rule.insert:
            lines += [rule.save_line("-D")] * state.has_line(rule)
            lines.append(rule.save_line("-I", position=1))
        else:
            lines.append(rule.save_line())
    return "\n".join([*lines, "COMMIT", ""])


def _teardown_payload(table: str, rules: list[Rule], state: TableState) -> str:
    chain = _chain_of(rules)
    # Every jump into our chain (ours, copies, or added by hand) must go before -X.
    lines = [
        "-D" + line[2:]
        for chain_rules in state.rules.values()
        for line in chain_rules
        if line.endswith(f" -j {chain}")
    ]
    if chain in state.chains:
        lines += [f":{chain} - [0:0]", f"-X {chain}"]
    if not lines:
        return ""
    return "\n".join([f"*{table}", *lines, "COMMIT", ""])
