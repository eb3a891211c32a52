"""Meta-tests that keep the plugin API honest: every hook is documented with its exact
signature, and every hook has a test here that calls it through the plugin host."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from flannel import hookspecs
from flannel.backend import BackendContext, BackendNetwork, ExternalInterface
from flannel.config import parse_config
from flannel.events import Event
from flannel.hookspecs import hookimpl
from flannel.lease import Lease, LeaseAttrs
from flannel.metrics import Metrics
from flannel.plugins.host import PluginHost

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-backend.md"


def hook_names() -> list[str]:
    return sorted(
        name
        for name in dir(hookspecs)
        if callable(getattr(hookspecs, name)) and hasattr(getattr(hookspecs, name), "flannel_spec")
    )


def signature_text(name: str) -> str:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    assert f"### `{signature_text(name)}`" in DOC.read_text(), (
        f"docs/writing-a-backend.md lacks a heading with the exact signature {signature_text(name)}"
    )


def test_every_hook_has_a_test() -> None:
    tested = {
        n.removeprefix("test_hook_")
        for n in dir(sys.modules[__name__])
        if n.startswith("test_hook_")
    }
    assert tested == set(hook_names())


class Recorder:
    """A plugin that records every hook call (and a bystander that must never be called)."""

    def __init__(self, types: Sequence[str]) -> None:
        self.types = list(types)
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def backend_types(self) -> Sequence[str]:
        self.calls.append(("backend_types", None))
        return self.types

    @hookimpl
    async def register_network(self, backend_type: str, ctx: BackendContext) -> BackendNetwork:
        self.calls.append(("register_network", backend_type))
        lease = await ctx.acquire_lease(backend_type=backend_type, backend_data={"K": 1})
        return BackendNetwork(backend_type=backend_type, lease=lease, mtu=1400, ctx=ctx)

    @hookimpl
    async def run(self, network: BackendNetwork) -> None:
        self.calls.append(("run", network.lease.key))

    @hookimpl
    def handle_events(self, network: BackendNetwork, events: Sequence[Event]) -> None:
        self.calls.append(("handle_events", [e.lease.key for e in events]))


def _host() -> tuple[PluginHost, Recorder, Recorder]:
    host = PluginHost()
    mine, other = Recorder(["demo"]), Recorder(["other"])
    host.add("demo", mine)
    host.add("other", other)
    return host, mine, other


def _ctx() -> tuple[BackendContext, list[dict[str, Any]]]:
    asked: list[dict[str, Any]] = []

    async def acquire_lease(**kw: Any) -> Lease:
        asked.append(kw)
        return Lease(
            subnet=IPv4Network("10.9.3.0/24"),
            attrs=LeaseAttrs(public_ip=IPv4Address("198.18.0.11"), backend_type=kw["backend_type"]),
        )

    ctx = BackendContext(
        backend_type="demo",
        network=parse_config('{"Network": "10.9.0.0/16", "Backend": {"Type": "demo"}}'),
        ext_iface=ExternalInterface("eth0", 2, 1500, IPv4Address("198.18.0.11")),
        acquire_lease=acquire_lease,
        metrics=Metrics(),
    )
    return ctx, asked


def test_hook_backend_types() -> None:
    host, mine, other = _host()
    assert host.types() == ["demo", "other"]
    assert ("backend_types", None) in mine.calls and ("backend_types", None) in other.calls


async def test_hook_register_network() -> None:
    host, mine, other = _host()
    ctx, asked = _ctx()
    network = await host.register_network("DEMO", ctx)
    assert network.mtu == 1400 and str(network.lease.subnet) == "10.9.3.0/24"
    assert asked == [{"backend_type": "DEMO", "backend_data": {"K": 1}}]
    assert [c for c, _ in mine.calls if c != "backend_types"] == ["register_network"]
    assert [c for c, _ in other.calls if c != "backend_types"] == []


async def test_hook_run() -> None:
    host, mine, other = _host()
    ctx, _ = _ctx()
    network = await host.register_network("demo", ctx)
    await host.run(network)
    assert ("run", "10.9.3.0-24") in mine.calls
    assert not any(c == "run" for c, _ in other.calls)


async def test_hook_handle_events() -> None:
    host, mine, other = _host()
    ctx, _ = _ctx()
    network = await host.register_network("demo", ctx)
    peer = Lease(subnet=IPv4Network("10.9.4.0/24"), attrs=LeaseAttrs(backend_type="demo"))
    await host.handle_events(network, [Event.added(peer), Event.removed(peer)])
    assert ("handle_events", ["10.9.4.0-24", "10.9.4.0-24"]) in mine.calls
    assert not any(c == "handle_events" for c, _ in other.calls)


def test_lease_gone_reads_the_stop_reason_and_expiry() -> None:
    import time

    ctx, _ = _ctx()
    own = IPv4Network("10.9.3.0/24")
    live = BackendNetwork("demo", Lease(own, expiration=time.time() + 3600), 1500, ctx)
    assert not live.lease_gone()
    for reason, gone in (("shutdown", False), ("lease_lost", True), ("network_removed", True)):
        live.stop_reason = reason
        assert live.lease_gone() is gone
    assert BackendNetwork("demo", Lease(own, expiration=time.time() - 1), 1500, ctx).lease_gone()
    assert not BackendNetwork("demo", Lease(own, expiration=None), 1500, ctx).lease_gone()
