"""The masquerade drivers against real firewalls, each inside a fresh network namespace."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network

import pytest

from flannel.ipmasq import MasqError, MasqManager, choose_driver, netns_runner
from flannel.ipmasq.iptables import IptablesDriver
from flannel.ipmasq.nftables import NftablesDriver
from flannel.ipmasq.runner import CommandResult, Runner
from flannel.metrics import Metrics
from flannel.testing.netns import Netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

N = IPv4Network("10.244.0.0/16")
S = IPv4Network("10.244.1.0/24")
N6 = IPv6Network("fd00:10::/56")
S6 = IPv6Network("fd00:10:0:5::/64")

MASQ = '-m comment --comment "flanneld masq"'
FWD = '-m comment --comment "flanneld forward"'
# What flanneld v0.20.2's k8s functional test asserts with `iptables -S`.
GOLDEN_POSTRTG = f"""\
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {MASQ} -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 {MASQ} -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {MASQ} -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 {MASQ} -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {MASQ} -j MASQUERADE --random-fully
"""
GOLDEN_FWD = f"""\
-N FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 {FWD} -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 {FWD} -j ACCEPT
"""
GOLDEN_NFT_V4 = """\
table ip flannel-ipv4 {
	comment "rules for flannel-ipv4"
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
		ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment "flanneld masq"
		ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
		ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment "flanneld masq"
		ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment "flanneld masq"
	}

	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.0/16 accept comment "flanneld forward"
		ip daddr 10.244.0.0/16 accept comment "flanneld forward"
	}
}
"""  # noqa: E501


class Recorder:
    """Wraps a real runner and remembers each command, to prove what a resync wrote."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str], stdin: str | None) -> CommandResult:
        self.calls.append(tuple(argv))
        return await self.inner(argv, stdin)

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0].endswith("-restore") or c[:2] == ("nft", "-f")]


@pytest.fixture
def ns(netns_factory: Callable[[str], Netns]) -> Netns:
    return netns_factory("masq")


def _ipt(ns: Netns, variant: str, *args: str, v6: bool = False) -> str:
    base = "ip6tables" if v6 else "iptables"
    return ns.run([f"{base}-{variant}" if variant else base, *args]).stdout


@pytest.mark.parametrize("variant", ["", "legacy"])
async def test_iptables_rules_exact_resync_and_teardown(ns: Netns, variant: str) -> None:
    rec = Recorder(netns_runner(ns.name))
    # Someone else's rule already in POSTROUTING: ours must go above it and survive teardown.
    _ipt(ns, variant, "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "ACCEPT")
    metrics = Metrics()
    masq = MasqManager(N, S, runner=rec, driver=IptablesDriver(rec, variant), metrics=metrics)
    await masq.apply()
    assert _ipt(ns, variant, "-t", "nat", "-S", "FLANNEL-POSTRTG") == GOLDEN_POSTRTG
    assert _ipt(ns, variant, "-t", "nat", "-S", "POSTROUTING") == (
        f"-P POSTROUTING ACCEPT\n-A POSTROUTING {MASQ} -j FLANNEL-POSTRTG\n"
        "-A POSTROUTING -o lo -j ACCEPT\n"
    )
    assert _ipt(ns, variant, "-S", "FLANNEL-FWD") == GOLDEN_FWD
    assert (
        _ipt(ns, variant, "-S", "FORWARD")
        == f"-P FORWARD ACCEPT\n-A FORWARD {FWD} -j FLANNEL-FWD\n"
    )
    assert await masq.missing() == []

    # Nothing changed: a resync reads but writes nothing.
    rec.calls.clear()
    assert await masq.resync() == []
    assert rec.calls and rec.writes() == []
    assert metrics.counter("masq_repairs_total").get() == 0

    # A rule deleted by hand comes back, in place.
    _ipt(ns, variant, "-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", "10.244.0.0/16", "!", "-d",
         "224.0.0.0/4", "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE",
         "--random-fully")  # fmt: skip
    _ipt(ns, variant, "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j",
         "FLANNEL-FWD")  # fmt: skip
    problems = await masq.resync()
    assert len(problems) == 2, problems
    assert _ipt(ns, variant, "-t", "nat", "-S", "FLANNEL-POSTRTG") == GOLDEN_POSTRTG
    assert _ipt(ns, variant, "-S", "FORWARD").count("FLANNEL-FWD") == 1
    assert metrics.counter("masq_repairs_total").get() == 1
    rec.calls.clear()
    assert await masq.resync() == [] and rec.writes() == []

    await masq.teardown()
    nat = _ipt(ns, variant, "-t", "nat", "-S")
    assert "FLANNEL" not in nat and "-A POSTROUTING -o lo -j ACCEPT" in nat
    assert "FLANNEL" not in _ipt(ns, variant, "-S")
    await masq.teardown()  # idempotent


async def test_iptables_ipv6_rules(ns: Netns) -> None:
    runner = netns_runner(ns.name)
    masq = MasqManager(None, None, ipv6_network=N6, ipv6_subnet=S6, driver=IptablesDriver(runner))
    await masq.apply()
    got = _ipt(ns, "", "-t", "nat", "-S", "FLANNEL-POSTRTG", v6=True)
    assert (
        f"-A FLANNEL-POSTRTG -s fd00:10::/56 ! -d ff00::/8 {MASQ} -j MASQUERADE --random-fully"
        in got
    )
    assert f"-A FLANNEL-POSTRTG ! -s fd00:10::/56 -d fd00:10:0:5::/64 {MASQ} -j RETURN" in got
    assert "FLANNEL" not in _ipt(ns, "", "-t", "nat", "-S")  # no IPv4 rules
    assert await masq.resync() == []
    await masq.teardown()
    assert "FLANNEL" not in _ipt(ns, "", "-t", "nat", "-S", v6=True)


async def test_nftables_table_exact_resync_and_teardown(ns: Netns) -> None:
    rec = Recorder(netns_runner(ns.name))
    masq = MasqManager(N, S, ipv6_network=N6, ipv6_subnet=S6, driver=NftablesDriver(rec))
    await masq.apply()
    assert ns.run(["nft", "list", "table", "ip", "flannel-ipv4"]).stdout == GOLDEN_NFT_V4
    v6 = ns.run(["nft", "list", "table", "ip6", "flannel-ipv6"]).stdout
    assert "ip6 saddr fd00:10::/56 ip6 daddr != ff00::/8 masquerade fully-random" in v6
    # no iptables chains were made
    assert "FLANNEL" not in ns.run(["iptables", "-t", "nat", "-S"]).stdout

    rec.calls.clear()
    assert await masq.resync() == [] and rec.writes() == []

    listing = ns.run(["nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg"]).stdout
    handle = next(
        line.rsplit("# handle ", 1)[1] for line in listing.splitlines() if "224.0.0.0/4" in line
    )
    ns.run(["nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle])
    assert "224.0.0.0/4" not in ns.run(["nft", "list", "table", "ip", "flannel-ipv4"]).stdout
    assert await masq.resync() == ["table ip flannel-ipv4 differs from what flannel wrote"]
    assert ns.run(["nft", "list", "table", "ip", "flannel-ipv4"]).stdout == GOLDEN_NFT_V4

    ns.run(["nft", "delete", "table", "ip6", "flannel-ipv6"])
    assert await masq.resync() == ["table ip6 flannel-ipv6 is missing"]
    assert "flannel-ipv6" in ns.run(["nft", "list", "tables"]).stdout

    await masq.teardown()
    assert "flannel" not in ns.run(["nft", "list", "tables"]).stdout
    await masq.teardown()


async def _monitor_listening(ns: Netns, out: asyncio.StreamReader) -> None:
    """Return once ``nft monitor`` reports changes (it may subscribe after it starts)."""
    for i in range(200):
        ns.run(["nft", "add", "table", "inet", f"probe{i}"])
        try:
            await asyncio.wait_for(out.readline(), 0.5)
            break
        except TimeoutError:
            continue
    ns.run(["nft", "add", "table", "inet", "marker0"])
    while (await out.readline()).decode().strip() != "add table inet marker0":
        pass


@pytest.mark.parametrize("kind", ["nftables", "iptables-nft"])
async def test_resync_makes_no_kernel_writes(ns: Netns, kind: str) -> None:
    """``nft monitor`` shows every ruleset change in the namespace (iptables-nft's too): a
    resync of rules that are in place must cause none."""
    runner = netns_runner(ns.name)
    driver = NftablesDriver(runner) if kind == "nftables" else IptablesDriver(runner, "nft")
    masq = MasqManager(N, S, driver=driver)
    await masq.apply()
    monitor = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns.name, "nft", "monitor", "ruleset",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert monitor.stdout is not None
    try:
        # Markers prove the monitor listens: everything between them came from the resyncs.
        await _monitor_listening(ns, monitor.stdout)
        for _ in range(3):
            assert await masq.resync() == []
        ns.run(["nft", "add", "table", "inet", "marker"])
        first = (await monitor.stdout.readline()).decode()
    finally:
        monitor.kill()
        await monitor.wait()
    assert first.strip() == "add table inet marker"
    await masq.teardown()


async def test_auto_choice_and_errors(ns: Netns) -> None:
    runner = netns_runner(ns.name)
    driver = await choose_driver("auto", runner)
    assert driver.name == "iptables"  # iptables is installed here
    assert (await choose_driver("nftables", runner)).name == "nftables"
    with pytest.raises(MasqError, match="--masq-backend 'ebtables' is unknown"):
        await choose_driver("ebtables", runner)
    # With legacy rules present and no nf_tables rules, auto follows the legacy tables.
    ns.run(["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-j", "ACCEPT"])
    driver = await choose_driver("auto", runner)
    assert isinstance(driver, IptablesDriver) and driver.variant == "legacy"
