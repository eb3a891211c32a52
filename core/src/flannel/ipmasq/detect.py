"""Choosing the firewall driver: ``--masq-backend auto|iptables|nftables``.

``auto`` prefers iptables when it is installed (kube-proxy and CNI plugins use it too, so
the rules sit next to theirs) and picks its variant the way kube's iptables-wrapper does:
legacy only when the legacy tables hold rules and the nf_tables ones do not; otherwise the
system's default ``iptables``. Without iptables, ``nft`` is used. ``iptables`` means the
system's default ``iptables`` binaries; ``nftables`` means our own nft tables.
"""

from __future__ import annotations

from typing import Protocol

from flannel.ipmasq.iptables import IptablesDriver
from flannel.ipmasq.nftables import NftablesDriver
from flannel.ipmasq.rules import RuleSet
from flannel.ipmasq.runner import Runner, run_command

__all__ = ["MASQ_BACKENDS", "MasqDriver", "MasqError", "choose_driver"]

MASQ_BACKENDS = ("auto", "iptables", "nftables")


class MasqError(RuntimeError):
    """The masquerade rules cannot be installed; the message says why and what to do."""


class MasqDriver(Protocol):
    """What :class:`flannel.ipmasq.MasqManager` needs from a firewall driver."""

    name: str

    def describe(self) -> str: ...
    async def available(self) -> bool: ...
    async def random_fully(self, family: int = 4) -> bool: ...
    async def missing(self, rule_set: RuleSet) -> list[str]:
        """Read-only check; empty when every rule is in place."""
        ...

    async def apply(self, rule_set: RuleSet) -> None: ...
    async def repair(self, rule_set: RuleSet) -> list[str]:
        """Rebuild what drifted; returns the problems found (empty: nothing was written)."""
        ...

    async def teardown(self, rule_set: RuleSet) -> None: ...


async def _rule_lines(runner: Runner, tool: str) -> int:
    result = await runner([tool], None)
    if result.returncode != 0:
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("-A "))


async def choose_driver(backend: str = "auto", runner: Runner = run_command) -> MasqDriver:
    """Return the driver for ``backend``; raises :class:`MasqError` when it cannot work here."""
    if backend not in MASQ_BACKENDS:
        choices = ", ".join(MASQ_BACKENDS)
        raise MasqError(f"--masq-backend {backend!r} is unknown: use one of {choices}")
    ipt = IptablesDriver(runner)
    nft = NftablesDriver(runner)
    if backend == "iptables":
        if not await ipt.available():
            raise MasqError(
                "--masq-backend iptables: iptables-restore not found: install iptables "
                "or use --masq-backend nftables"
            )
        return ipt
    if backend == "nftables":
        if not await nft.available():
            raise MasqError(
                "--masq-backend nftables: nft not found: install nftables "
                "or use --masq-backend iptables"
            )
        return nft
    if await ipt.available():
        legacy = IptablesDriver(runner, "legacy")
        nf = IptablesDriver(runner, "nft")
        if await legacy.available() and await nf.available():
            legacy_rules = await _rule_lines(runner, "iptables-legacy-save")
            nft_rules = await _rule_lines(runner, "iptables-nft-save")
            if legacy_rules and not nft_rules:
                return legacy
        return ipt
    if await nft.available():
        return nft
    raise MasqError(
        "--ip-masq needs iptables or nftables and neither iptables-restore nor nft was found: "
        "install one of them or run without --ip-masq"
    )
