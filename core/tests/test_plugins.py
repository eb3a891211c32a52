"""The plugin host: loading from entry points, isolation of broken plugins, allow/block lists,
hook validation, type conflicts and calling only the providing plugin."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint, distributions
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.backend import BackendContext, BackendNetwork, ExternalInterface
from flannel.config import parse_config
from flannel.events import Event
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel.plugins.host import CONFLICT, DISABLED, ERROR, OK, PluginError, PluginHost

GOOD = """
from flannel.hookspecs import hookimpl
from flannel.backend import BackendNetwork
CALLS = []

@hookimpl
def backend_types():
    return ["{type}"]

@hookimpl
async def register_network(backend_type, ctx):
    CALLS.append(("register_network", backend_type))
    lease = await ctx.acquire_lease(backend_type=backend_type)
    return BackendNetwork(backend_type=backend_type, lease=lease, mtu=1400, ctx=ctx)

@hookimpl
def run(network):
    CALLS.append(("run", network.backend_type))

@hookimpl
async def handle_events(network, events):
    CALLS.append(("handle_events", len(events)))
"""

BROKEN = """
raise RuntimeError("this plugin is broken on purpose")
"""

MISSPELT = """
from flannel.hookspecs import hookimpl

@hookimpl
def backend_types():
    return ["misspelt"]

@hookimpl
def register_network(backend_type, ctx):
    return None

@hookimpl
def handle_event(network, events):
    pass
"""

STRING_TYPES = """
from flannel.hookspecs import hookimpl

@hookimpl
def backend_types():
    return "vxlan"

@hookimpl
def register_network(backend_type, ctx):
    return None
"""


class Site:
    """A directory holding plugin modules and dist-info metadata, like site-packages."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, dist: str, ep_name: str, module: str, source: str, version: str = "1.0") -> None:
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[flannel]\n{ep_name} = {module}\n")

    def entry_points(self) -> list[EntryPoint]:
        return [
            ep
            for dist in distributions(path=[str(self.root)])
            for ep in dist.entry_points
            if ep.group == "flannel"
        ]

    def load(self, **env: str) -> PluginHost:
        return PluginHost.load(env=env, entry_points=self.entry_points())


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield Site(tmp_path)
    for name in set(sys.modules) - before:
        if name.startswith("fltest_"):
            del sys.modules[name]


def by_name(host: PluginHost) -> dict[str, object]:
    return {info.name: info for info in host.plugins}


def test_broken_plugin_beside_good_one(site: Site) -> None:
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"), "2.5")
    site.add("flannel-broken", "broken", "fltest_broken", BROKEN)
    host = site.load()
    infos = {i.name: i for i in host.plugins}
    assert infos["good"].status == OK and infos["good"].types == ("good",)
    assert infos["good"].distribution == "flannel-good" and infos["good"].version == "2.5"
    assert infos["broken"].status == ERROR
    assert infos["broken"].error == (
        "import failed: RuntimeError: this plugin is broken on purpose"
    )
    assert host.provider("good") is infos["good"]
    with pytest.raises(PluginError) as err:
        host.provider("broken")
    message = str(err.value)
    assert "flannel-broken" in message and "this plugin is broken on purpose" in message
    assert "\n" not in message


def test_unknown_type_lists_installed_types_and_install_hint(site: Site) -> None:
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"))
    site.add("flannel-broken", "broken", "fltest_broken", BROKEN)
    host = site.load()
    with pytest.raises(PluginError) as err:
        host.provider("host-gw")
    message = str(err.value)
    assert "unknown backend type 'host-gw'" in message
    assert "installed types: good" in message
    assert "pip install flannel-hostgw" in message
    assert "flannel-broken" in message  # failed plugins are mentioned as a hint


def test_allowlist_loads_only_named_plugins(site: Site) -> None:
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"))
    site.add("flannel-broken", "broken", "fltest_broken", BROKEN)
    host = site.load(FLANNEL_LOAD_PLUGINS="good")
    infos = {i.name: i for i in host.plugins}
    assert infos["good"].status == OK
    assert infos["broken"].status == DISABLED
    assert "fltest_broken" not in sys.modules  # a disabled plugin is never imported
    with pytest.raises(PluginError, match="disabled by FLANNEL_LOAD_PLUGINS"):
        host.provider("broken")


def test_empty_allowlist_loads_nothing(site: Site) -> None:
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"))
    host = site.load(FLANNEL_LOAD_PLUGINS="")
    assert [i.status for i in host.plugins] == [DISABLED]
    assert host.types() == []


def test_blocklist_skips_named_plugins(site: Site) -> None:
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"))
    site.add("flannel-other", "other", "fltest_other", GOOD.format(type="other"))
    host = site.load(FLANNEL_DISABLE_PLUGINS="other, nothing")
    assert host.types() == ["good"]
    infos = {i.name: i for i in host.plugins}
    assert infos["other"].status == DISABLED
    assert infos["other"].error == "disabled by FLANNEL_DISABLE_PLUGINS"


def test_hook_without_spec_is_a_load_error(site: Site) -> None:
    site.add("flannel-misspelt", "misspelt", "fltest_misspelt", MISSPELT)
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"))
    host = site.load()
    infos = {i.name: i for i in host.plugins}
    assert infos["misspelt"].status == ERROR
    assert "handle_event" in infos["misspelt"].error
    assert "does not define" in infos["misspelt"].error
    assert host.types() == ["good"]
    # its hooks were unregistered: nothing of it is left in the plugin manager
    assert host.pm.get_plugin("misspelt") is None
    host.pm.check_pending()


def test_backend_types_must_be_a_list(site: Site) -> None:
    site.add("flannel-strtypes", "strtypes", "fltest_strtypes", STRING_TYPES)
    host = site.load()
    (info,) = host.plugins
    assert info.status == ERROR and "must return a list" in info.error


def test_type_claimed_twice_is_a_conflict_naming_both(site: Site) -> None:
    site.add("flannel-a", "a", "fltest_a", GOOD.format(type="dup"))
    site.add("flannel-b", "b", "fltest_b", GOOD.format(type="dup"))
    host = site.load()
    assert [i.status for i in host.plugins] == [CONFLICT, CONFLICT]
    with pytest.raises(PluginError) as err:
        host.provider("DUP")
    message = str(err.value)
    assert "flannel-a" in message and "flannel-b" in message
    assert "FLANNEL_DISABLE_PLUGINS=b" in message
    # disabling one resolves it
    assert site.load(FLANNEL_DISABLE_PLUGINS="b").provider("dup").name == "a"


def _ctx(backend_type: str) -> BackendContext:
    async def acquire(**kw: object) -> Lease:
        return Lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(IPv4Address("198.18.0.1")))

    return BackendContext(
        backend_type=backend_type,
        network=parse_config('{"Network":"10.244.0.0/16"}'),
        ext_iface=ExternalInterface("veth0", 2, 1500),
        acquire_lease=acquire,
        metrics=Metrics(),
    )


async def test_network_hooks_reach_only_the_providing_plugin(site: Site) -> None:
    site.add("flannel-a", "a", "fltest_a", GOOD.format(type="a"))
    site.add("flannel-b", "b", "fltest_b", GOOD.format(type="b"))
    host = site.load()
    mod_a, mod_b = sys.modules["fltest_a"], sys.modules["fltest_b"]
    network = await host.register_network("b", _ctx("b"))
    assert isinstance(network, BackendNetwork) and network.mtu == 1400
    await host.run(network)
    await host.handle_events(network, [Event.added(network.lease)])
    assert mod_a.CALLS == []
    assert mod_b.CALLS == [("register_network", "b"), ("run", "b"), ("handle_events", 1)]


async def test_register_network_must_return_a_network(site: Site) -> None:
    site.add(
        "flannel-misspelt",
        "misspelt",
        "fltest_nonet",
        MISSPELT.replace("handle_event(", "handle_events("),
    )
    host = site.load()
    with pytest.raises(Exception, match="not a BackendNetwork"):
        await host.register_network("misspelt", _ctx("misspelt"))


def test_builtin_alloc_comes_from_the_entry_point() -> None:
    host = PluginHost.load(env={"FLANNEL_LOAD_PLUGINS": "alloc"})
    info = host.provider("alloc")
    assert info.distribution == "flannel-core" and info.target == "flannel.plugins.alloc"
    assert info.types == ("alloc",)


async def test_alloc_leases_public_ip_only_with_interface_mtu() -> None:
    host = PluginHost.load(env={"FLANNEL_LOAD_PLUGINS": "alloc"})
    seen: list[dict[str, object]] = []

    async def acquire(**kw: object) -> Lease:
        seen.append(kw)
        return Lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(IPv4Address("198.18.0.1")))

    ctx = _ctx("alloc")
    ctx.acquire_lease = acquire
    ctx.ext_iface = ExternalInterface("veth0", 2, 9001)
    network = await host.register_network("alloc", ctx)
    assert seen == [{"backend_type": ""}]  # flanneld's alloc lease has no BackendType
    assert network.mtu == 9001
    await host.run(network)  # returns at once: nothing to run
    await host.handle_events(network, [Event.added(network.lease)])


def test_trace_switch_logs_every_hook_call(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    site.add("flannel-good", "good", "fltest_good", GOOD.format(type="good"))
    with caplog.at_level("DEBUG", logger="flannel.plugins"):
        site.load(FLANNEL_TRACE_HOOKS="1")
    assert any("backend_types" in r.getMessage() for r in caplog.records)


def test_every_hook_is_documented_and_tested() -> None:
    """Meta-test: each hookspec has a docstring with versionadded and a test in this file."""
    from flannel import hookspecs

    source = Path(__file__).read_text()
    specs = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "flannel_spec")]
    assert sorted(specs) == ["backend_types", "handle_events", "register_network", "run"]
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "versionadded" in doc, f"hook {name} has no versionadded"
        assert f"host.{name}(" in source or f"def {name}(" in source, f"hook {name} untested"
