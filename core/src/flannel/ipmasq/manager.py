"""MasqManager: install flanneld's masquerade/forward rules, keep them, remove them on exit."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Network, IPv6Network

from flannel.ipmasq.detect import MasqDriver, MasqError, choose_driver
from flannel.ipmasq.rules import RuleSet, build_rule_set
from flannel.ipmasq.runner import CommandError, Runner, run_command
from flannel.metrics import Metrics

__all__ = ["MasqManager"]

log = logging.getLogger(__name__)


class MasqManager:
    """The rule lifecycle for one flannel network.

    Call after the lease is held::

        masq = MasqManager(net, lease.subnet, ipv6_network=..., ipv6_subnet=...,
                           masq=opts.ip_masq, forward=opts.iptables_forward_rules,
                           backend=opts.masq_backend, metrics=metrics)
        await masq.apply()
        task = tg.create_task(masq.resync_loop(opts.iptables_resync))
        ...
        finally: await masq.teardown()   # upstream leaves its rules behind; we do not

    A resync reads the tables and writes only when something drifted (counted in
    ``flannel_masq_repairs_total``). ``teardown`` removes exactly what ``apply`` made.
    """

    def __init__(
        self,
        network: IPv4Network | None,
        subnet: IPv4Network | None,
        *,
        ipv6_network: IPv6Network | None = None,
        ipv6_subnet: IPv6Network | None = None,
        masq: bool = True,
        forward: bool = True,
        backend: str = "auto",
        runner: Runner = run_command,
        metrics: Metrics | None = None,
        driver: MasqDriver | None = None,
        name: str = "",
    ) -> None:
        self._want = (network, subnet, ipv6_network, ipv6_subnet)
        self.name = name
        """The network's name in multi-network mode: its own chains/tables."""
        self.masq = masq
        self.forward = forward
        self.backend = backend
        self.runner = runner
        self.driver = driver
        self.rule_set: RuleSet | None = None
        build_rule_set(network, subnet, ipv6_network, ipv6_subnet, masq=masq, forward=forward)
        metrics = metrics or Metrics()
        self._repairs = metrics.counter(
            "masq_repairs_total", "Masquerade/forward rule sets rebuilt because they drifted"
        )
        self._errors = metrics.counter(
            "masq_errors_total", "Failed attempts to apply or check the masquerade rules"
        )
        self._in_place = metrics.gauge(
            "masq_rules_in_place", "1 when flannel's masquerade/forward rules are installed"
        )

    @property
    def enabled(self) -> bool:
        return self.masq or self.forward

    async def _prepare(self) -> tuple[MasqDriver, RuleSet]:
        if self.driver is None:
            self.driver = await choose_driver(self.backend, self.runner)
        if self.rule_set is None:
            network, subnet, net6, subnet6 = self._want
            random_fully = await self.driver.random_fully(4 if network is not None else 6)
            self.rule_set = build_rule_set(
                network, subnet, net6, subnet6,
                masq=self.masq, forward=self.forward, random_fully=random_fully, name=self.name,
            )  # fmt: skip
        return self.driver, self.rule_set

    async def apply(self) -> None:
        """Install every rule (rebuilding our chains/tables atomically)."""
        if not self.enabled:
            return
        driver, rules = await self._prepare()
        try:
            await driver.apply(rules)
        except CommandError as exc:
            self._errors.inc()
            what = driver.describe()
            raise MasqError(f"installing masquerade rules with {what} failed: {exc}") from exc
        self._in_place.set(1)
        log.info(
            "masquerade rules installed",
            extra={"driver": driver.describe(), "masq": self.masq, "forward": self.forward},
        )

    async def missing(self) -> list[str]:
        """What is not in place right now (read-only)."""
        driver, rules = await self._prepare()
        return await driver.missing(rules)

    async def resync(self) -> list[str]:
        """Check once and repair drift; returns what was wrong (empty means no writes)."""
        if not self.enabled:
            return []
        driver, rules = await self._prepare()
        problems = await driver.repair(rules)
        if problems:
            self._repairs.inc()
            log.warning("masquerade rules repaired", extra={"problems": "; ".join(problems)})
        self._in_place.set(1)
        return problems

    async def resync_loop(self, interval: float) -> None:
        """Resync every ``interval`` seconds until cancelled; errors are logged, not fatal."""
        if interval <= 0:
            raise ValueError(f"--iptables-resync {interval} must be at least 1 second")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.resync()
            except (CommandError, MasqError, OSError) as exc:
                self._errors.inc()
                self._in_place.set(0)
                log.error("masquerade resync failed", extra={"error": str(exc)})

    async def teardown(self) -> None:
        """Remove our rules (idempotent; safe if apply never ran or failed half way)."""
        if not self.enabled or self.driver is None or self.rule_set is None:
            return
        try:
            await self.driver.teardown(self.rule_set)
        except CommandError as exc:
            self._errors.inc()
            raise MasqError(f"removing masquerade rules failed: {exc}") from exc
        self._in_place.set(0)
        log.info("masquerade rules removed", extra={"driver": self.driver.describe()})
