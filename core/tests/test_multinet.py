"""Multi-network mode: flags, network discovery in etcd, the supervisor, and the cleanup
of a removed network's kernel state (in a namespace)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from flannel.config import parse_config
from flannel.etcd import EtcdClientConfig
from flannel.etcd_manager import EtcdSubnetManager
from flannel.multinet import NetworkSupervisor, network_cidrs, remove_network_state
from flannel.netwatch import EtcdNetworks, network_names
from flannel.network import FatalError
from flannel.options import DEFAULT_SUBNET_DIR, UsageError, parse_args
from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns

# -- flags -----------------------------------------------------------------------------


def test_multi_network_and_client_server_flags() -> None:
    opts = parse_args(["-networks=blue,red", "--watch-networks", "--subnet-dir", "/tmp/n"], env={})
    assert opts.networks == ["blue", "red"] and opts.watch_networks and opts.multi_network
    assert opts.subnet_dir == Path("/tmp/n")
    assert not parse_args([], env={}).multi_network
    assert parse_args([], env={}).subnet_dir == DEFAULT_SUBNET_DIR
    assert parse_args(["--watch-networks"], env={}).multi_network
    server = parse_args(["--listen=tcp://198.18.0.1:8080"], env={})
    assert server.listen == "198.18.0.1:8080"
    assert parse_args(["--listen", ":8080"], env={}).listen == "0.0.0.0:8080"
    client = parse_args(["--remote=198.18.0.1:8080", "--remote-cafile=/ca.pem"], env={})
    assert client.remote == "198.18.0.1:8080" and client.remote_tls


def test_flags_from_environment() -> None:
    env = {
        "FLANNELD_REMOTE": "198.18.0.1:8080",
        "FLANNELD_REMOTE_CERTFILE": "/c.pem",
        "FLANNELD_REMOTE_KEYFILE": "/c.key",
        "FLANNELD_REMOTE_CAFILE": "/ca.pem",
        "FLANNELD_NETWORKS": "a,b",
        "FLANNELD_WATCH_NETWORKS": "true",
        "FLANNELD_SUBNET_DIR": "/run/x",
    }
    opts = parse_args([], env=env)
    assert (opts.remote, opts.remote_certfile, opts.remote_keyfile, opts.remote_cafile) == (
        "198.18.0.1:8080", "/c.pem", "/c.key", "/ca.pem",
    )  # fmt: skip
    assert opts.networks == ["a", "b"] and opts.watch_networks
    assert opts.subnet_dir == Path("/run/x")
    assert parse_args([], env={"FLANNELD_LISTEN": "127.0.0.1:9"}).listen == "127.0.0.1:9"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--listen=:1", "--remote=1.2.3.4:5"], "-listen=0.0.0.0:1 and -remote=1.2.3.4:5 are"),
        (["--listen=fd://3"], "bad listener scheme"),
        (["--listen=198.18.0.1"], "expected host:port"),
        (["--listen=:99999"], "expected host:port"),
        (["--remote=198.18.0.1"], "expected host:port of the --listen server"),
        (["--networks=a/b"], "'a/b' is not a network name"),
        (["--networks=a,a"], "a network is named twice"),
        (["--networks=subnets"], "not 'config' or 'subnets'"),
        (["--remote=1.2.3.4:5", "--remote-certfile=/c"], "-remote-keyfile go together"),
        (["--listen=:1", "--remote-cafile=/ca"], "needs -remote-certfile and -remote-keyfile"),
        (["--remote-cafile=/ca"], "only apply with -listen or -remote"),
        (["--subnet-dir="], "expected a file path"),
    ],
)  # fmt: skip
def test_bad_flags_name_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_args(argv, env={})
    assert message in str(err.value)


def test_listen_with_remote_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from flannel.cli.flanneld import run

    assert run(["--listen=:8080", "--remote=198.18.0.1:8080"]) == 2
    assert "mutually exclusive" in capsys.readouterr().err


# -- discovery in etcd -----------------------------------------------------------------


def test_network_names_from_keys() -> None:
    keys = [b"/p/a/config", b"/p/a/subnets/10.0.1.0-24", b"/p/b/subnets/x", b"/p/config",
            b"/p/c/config", b"/pq/d/config", b"/p/e/f/config"]  # fmt: skip
    assert network_names("/p", keys) == {"a", "c"}


async def test_etcd_networks_follow_configs(etcd_server: EtcdServer) -> None:
    client = EtcdClientConfig(endpoints=(etcd_server.endpoint,))
    writer = EtcdSubnetManager(client, "/multi", network_name="blue")
    source = EtcdNetworks(client, "/multi")
    watch = source.watch().__aiter__()
    try:
        assert await asyncio.wait_for(watch.__anext__(), 10) == set()
        await writer.set_config(json.dumps({"Network": "10.5.0.0/16"}))
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"blue"}
        red = EtcdSubnetManager(client, "/multi", network_name="red")
        await red.set_config(json.dumps({"Network": "10.6.0.0/16"}))
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"blue", "red"}
        await red.set_config(json.dumps({"Network": "10.7.0.0/16"}))  # rewritten in place
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"blue", "red"}
        await red.close()
        assert (await source.list())[0] == {"blue", "red"}
        # removing a config is a removal; lease keys alone are not networks
        conn = writer.registry.conn
        client_, _ = await conn.client()
        await client_.delete(b"/multi/blue/config")
        assert await asyncio.wait_for(watch.__anext__(), 10) == {"red"}
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
        await source.close()
        await writer.close()


# -- the supervisor (pure logic over an in-memory source) --------------------------------


class FakeSource:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[set[str]] = asyncio.Queue()

    async def watch(self) -> AsyncIterator[set[str]]:
        while True:
            yield await self.queue.get()

    async def close(self) -> None:
        return None


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - polls plain test state
            await asyncio.sleep(0.01)


async def test_supervisor_starts_stops_and_cleans_up_networks() -> None:
    source = FakeSource()
    running: set[str] = set()
    removed: list[str] = []

    async def run(name: str) -> None:
        running.add(name)
        try:
            await asyncio.Event().wait()
        finally:
            running.discard(name)

    async def on_removed(name: str) -> None:
        assert name not in running  # cleanup comes after the network stopped
        removed.append(name)

    supervisor = NetworkSupervisor(source, run, on_removed, allowed=["a", "b"], watch=True)
    task = asyncio.create_task(supervisor.run())
    await source.queue.put({"a", "c"})  # c is not allowed
    await _until(lambda: running == {"a"})
    assert supervisor.initial == {"a"}
    await source.queue.put({"a", "b", "c"})
    await _until(lambda: running == {"a", "b"})
    await source.queue.put({"b"})
    await _until(lambda: removed == ["a"] and running == {"b"})
    await source.queue.put({"a", "b"})
    await _until(lambda: running == {"a", "b"})
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert running == set() and removed == ["a"]  # shutdown is not a removal


async def test_supervisor_without_watch_fails_when_every_network_failed() -> None:
    source = FakeSource()

    async def run(name: str) -> None:
        raise FatalError(f"bad config for {name}")

    async def on_removed(name: str) -> None:
        raise AssertionError("not called")

    await source.queue.put({"a", "b"})
    with pytest.raises(FatalError, match="every network failed: a: bad config for a; b: bad"):
        await NetworkSupervisor(source, run, on_removed).run()
    await source.queue.put(set())
    with pytest.raises(FatalError, match="no network to join"):
        await NetworkSupervisor(source, run, on_removed, allowed=["x"]).run()


# -- cleanup of a removed network --------------------------------------------------------


def test_remove_network_state_deletes_only_that_networks_routes_and_devices(
    netns_factory: Callable[[str], Netns],
) -> None:
    ns = netns_factory("mnclean")
    ns.sh(
        "ip link add ext0 type veth peer name ext1 && ip link set ext0 up"
        " && ip link set ext1 up && ip addr add 198.18.0.1/24 dev ext0"
        " && ip link add flannel.9 type veth peer name f9 && ip link set f9 up"
        " && ip link set flannel.9 up && ip addr add 10.50.3.0/32 dev flannel.9"
        " && ip link add flannel.8 type veth peer name f8 && ip link set f8 up"
        " && ip link set flannel.8 up && ip addr add 10.60.3.0/32 dev flannel.8"
        " && ip link add cni0 type bridge && ip addr add 10.50.9.1/24 dev cni0"
        " && ip route add 10.50.4.0/24 via 198.18.0.4 proto 75"
        " && ip route add 10.50.5.0/24 via 198.18.0.5 proto static"
        " && ip route add 10.60.4.0/24 via 198.18.0.4 proto 75"
        " && ip route add 10.50.6.0/24 dev flannel.9 proto 75"
    )
    config = parse_config(json.dumps({"Network": "10.50.0.0/16"}))
    assert network_cidrs(config) == [IPv4Network("10.50.0.0/16")]
    routes, devices = remove_network_state(
        network_cidrs(config), keep=[IPv4Network("10.60.0.0/16")], netns=ns.name
    )
    assert devices == ["flannel.9"]
    assert routes == 1  # 10.50.4.0/24; the one via flannel.9 went with the device
    links = ns.sh("ip -o link show")
    assert "flannel.8" in links and "cni0" in links and "flannel.9" not in links
    table = ns.sh("ip route show")
    assert "10.50.4.0/24" not in table and "10.50.6.0/24" not in table
    assert "10.50.5.0/24" in table and "10.60.4.0/24" in table


# -- masquerade/forward rules of several networks -----------------------------------------


def test_each_network_gets_its_own_chains_and_tables() -> None:
    from flannel.ipmasq.nftables import table_name
    from flannel.ipmasq.rules import build_rule_set, chain_name

    default = build_rule_set(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.1.0/24"))
    assert {r.chain for r in default.families[0].iptables_rules()} == {
        "POSTROUTING", "FLANNEL-POSTRTG", "FORWARD", "FLANNEL-FWD",
    }  # fmt: skip
    blue = build_rule_set(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.1.0/24"), name="blue")
    assert {r.chain for r in blue.families[0].iptables_rules()} == {
        "POSTROUTING", "FLANNEL-POSTRTG-blue", "FORWARD", "FLANNEL-FWD-blue",
    }  # fmt: skip
    assert table_name(4) == "flannel-ipv4" and table_name(4, "blue") == "flannel-ipv4-blue"
    long_a, long_b = (
        chain_name("FLANNEL-POSTRTG", "a" * 40),
        chain_name("FLANNEL-POSTRTG", "a" * 41),
    )
    assert len(long_a) <= 28 and len(long_b) <= 28 and long_a != long_b


@pytest.mark.parametrize("kind", ["iptables", "nftables"])
async def test_two_networks_rules_coexist_in_a_namespace(
    netns_factory: Callable[[str], Netns], kind: str
) -> None:
    from flannel.ipmasq import MasqManager, netns_runner
    from flannel.ipmasq.iptables import IptablesDriver
    from flannel.ipmasq.nftables import NftablesDriver

    ns = netns_factory("mnmasq")
    runner = netns_runner(ns.name)

    def manager(name: str, net: str, sub: str) -> MasqManager:
        driver = IptablesDriver(runner) if kind == "iptables" else NftablesDriver(runner)
        return MasqManager(IPv4Network(net), IPv4Network(sub), driver=driver, name=name)

    blue = manager("blue", "10.50.0.0/16", "10.50.1.0/24")
    red = manager("red", "10.60.0.0/16", "10.60.1.0/24")
    await blue.apply()
    await red.apply()
    # neither resync sees the other network's rules as drift
    assert await blue.resync() == [] and await red.resync() == []
    await blue.teardown()
    assert await red.missing() == []
    listing = ns.sh("iptables-save" if kind == "iptables" else "nft list ruleset")
    assert "10.60.0.0/16" in listing and "10.50.0.0/16" not in listing
    await red.teardown()


async def test_supervisor_retries_a_failed_network_when_its_config_is_written_again() -> None:
    source = FakeSource()
    attempts: list[str] = []

    async def run(name: str) -> None:
        attempts.append(name)
        if len(attempts) == 1:
            raise FatalError("invalid network config")
        await asyncio.Event().wait()

    async def on_removed(name: str) -> None:
        raise AssertionError("not called")

    supervisor = NetworkSupervisor(source, run, on_removed, watch=True)
    task = asyncio.create_task(supervisor.run())
    await source.queue.put({"a"})
    await _until(lambda: supervisor.failed.get("a") == "invalid network config")
    await source.queue.put({"a"})  # the same set again: the config was rewritten
    await _until(lambda: attempts == ["a", "a"] and "a" in supervisor.running)
    assert "a" not in supervisor.failed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
