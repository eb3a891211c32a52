"""Several networks in one daemon (flanneld 0.7.1 ``--networks`` / ``--watch-networks``).

:class:`NetworkSupervisor` runs one task per network (each a full
:class:`flannel.network.NetworkLifecycle` with its own subnet manager, backend, env file
and masquerade rules) and, with ``--watch-networks``, starts and stops networks as their
configs appear and disappear. A network stopped because its config was deleted is also
cleaned up, unlike flanneld (which left routes and devices behind): its env file is
removed and :func:`remove_network_state` deletes what the backend left in the kernel.

One network failing (a fatal setup error) stops only that network; with
``--watch-networks`` it is started again when its config is written again (or reappears).
Without it the daemon exits 1 once every network has failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any

from flannel import sdnotify, subnetenv
from flannel.config import NetworkConfig
from flannel.daemon import cancel_all, env_file, etcd_client_config, make_subnet_manager
from flannel.lease import Lease
from flannel.netwatch import EtcdNetworks, NetworkSource, RemoteNetworks
from flannel.network import FatalError, NetworksReadiness, Readiness
from flannel.plugins.host import PluginHost

if TYPE_CHECKING:
    from flannel.daemon import Daemon

__all__ = ["NetworkSupervisor", "network_cidrs", "remove_network_state", "run_networks"]

log = logging.getLogger("flannel.multinet")

RunNetwork = Callable[[str], Coroutine[Any, Any, None]]
RemoveNetwork = Callable[[str], Awaitable[None]]


class NetworkSupervisor:
    """Keeps the allowed networks that exist running: ``run(name)`` per network until
    cancelled; ``removed(name)`` after a network whose config disappeared was stopped."""

    def __init__(
        self,
        source: NetworkSource,
        run: RunNetwork,
        removed: RemoveNetwork,
        *,
        allowed: Collection[str] = (),
        watch: bool = False,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.run_network = run
        self.removed = removed
        self.allowed = set(allowed)
        self.watch = watch
        self.running: dict[str, asyncio.Task[None]] = {}
        self.failed: dict[str, str] = {}
        self.initial: set[str] | None = None
        """The networks started at startup (None before the first listing)."""
        self.on_started = on_started

    def _wanted(self, names: set[str]) -> set[str]:
        return {n for n in names if not self.allowed or n in self.allowed}

    def _start(self, name: str) -> None:
        log.info("network %s: starting", name)
        task = asyncio.create_task(self.run_network(name), name=f"network-{name}")
        task.add_done_callback(functools.partial(self._ended, name))
        self.running[name] = task

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self.running.get(name) is task:
            del self.running[name]
        if task.cancelled():
            return
        exc = task.exception()
        reason = str(exc) if exc is not None else "stopped"
        self.failed[name] = reason
        log.error("network %s stopped: %s", name, reason)
        if not self.watch and not self.running:
            self._all_failed.set()

    async def _stop(self, name: str) -> None:
        task = self.running.pop(name, None)
        if task is None:
            return
        log.info("network %s: its config was deleted, stopping it", name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        try:
            await self.removed(name)
        except Exception as exc:
            log.warning("network %s: cleaning up after removal failed: %s", name, exc)

    async def run(self) -> None:
        """Until cancelled (or, without ``watch``, until every network failed)."""
        self._all_failed = asyncio.Event()
        watch = self.source.watch()
        try:
            names = self._wanted(await anext(watch))
            missing = self.allowed - names
            if missing and not self.watch:
                log.warning("networks %s have no config (yet); only --watch-networks would "
                            "pick them up later", ", ".join(sorted(missing)))  # fmt: skip
            for name in sorted(names):
                self._start(name)
            self.initial = set(names)
            if self.on_started is not None:
                self.on_started()
            if not self.watch:
                if not self.running:
                    raise FatalError(
                        "no network to join: none of "
                        f"{', '.join(sorted(self.allowed)) or 'the networks'} has a config "
                        "at <etcd-prefix>/<name>/config; create one or use --watch-networks"
                    )
                await self._all_failed.wait()
                raise FatalError(
                    "every network failed: "
                    + "; ".join(f"{n}: {r}" for n, r in sorted(self.failed.items()))
                )
            async for current in watch:
                wanted = self._wanted(current)
                for name in sorted(set(self.running) - wanted):
                    await self._stop(name)
                for name in sorted(wanted - set(self.running)):
                    self.failed.pop(name, None)
                    self._start(name)
        finally:
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            aclose = getattr(watch, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


# -- the daemon in multi-network mode ----------------------------------------------------------


async def run_networks(daemon: Daemon, host: PluginHost) -> None:
    """One lifecycle per network; READY=1 once every network present at startup is up
    (flanneld 0.7.1 never sent it in this mode)."""
    opts = daemon.opts
    source: NetworkSource
    if opts.remote:
        from flannel.remote.client import client_ssl_context

        tls = None
        if opts.remote_tls:
            tls = client_ssl_context(opts.remote_cafile, opts.remote_certfile, opts.remote_keyfile)
        source = RemoteNetworks(opts.remote, tls)
        probe: Callable[[], Awaitable[object]] = RemoteNetworks(opts.remote, tls).list
    else:
        try:
            etcd_source = EtcdNetworks(etcd_client_config(opts), opts.etcd_prefix)
        except ValueError as exc:
            raise FatalError(str(exc)) from exc
        source, probe = etcd_source, etcd_source.list
    readiness = daemon.readiness
    assert isinstance(readiness, NetworksReadiness)
    kept: dict[str, tuple[NetworkConfig, Lease]] = {}

    async def run_network(name: str) -> None:
        net_ready = Readiness(etcd_max_age=float("inf"), last_etcd_ok=time.monotonic())
        readiness.networks[name] = net_ready
        try:
            manager = make_subnet_manager(opts, name)
        except ValueError as exc:
            raise FatalError(str(exc)) from exc
        lifecycle = daemon.lifecycle(
            host, manager, name, net_ready, lambda _network: _check_all_ready(daemon, supervisor)
        )
        write = lifecycle.write_subnet_env

        def write_and_keep(config: NetworkConfig, lease: Lease, mtu: int) -> None:
            kept[name] = (config, lease)
            write(config, lease, mtu)

        lifecycle.write_subnet_env = write_and_keep
        try:
            await lifecycle.run()
        finally:
            readiness.networks.pop(name, None)
            with contextlib.suppress(Exception):
                await manager.close()

    async def removed(name: str) -> None:
        await _remove_network(daemon, name, kept.pop(name, None), kept)

    supervisor = NetworkSupervisor(
        source, run_network, removed, allowed=opts.networks, watch=opts.watch_networks,
        on_started=lambda: _check_all_ready(daemon, supervisor),
    )  # fmt: skip
    tasks = await daemon.serve_health(probe)
    try:
        await supervisor.run()
    finally:
        await cancel_all(tasks)
        with contextlib.suppress(Exception):
            await source.close()


def _check_all_ready(daemon: Daemon, supervisor: NetworkSupervisor) -> None:
    readiness = daemon.readiness
    if daemon.notified_ready:
        return
    if not isinstance(readiness, NetworksReadiness):
        return
    initial = supervisor.initial
    if initial is not None and all(
        n in readiness.networks and readiness.networks[n].network_ready for n in initial
    ):
        daemon.notified_ready = True
        sdnotify.ready()


async def _remove_network(
    daemon: Daemon,
    name: str,
    last: tuple[NetworkConfig, Lease] | None,
    others: dict[str, tuple[NetworkConfig, Lease]],
) -> None:
    """A network's config was deleted: remove its env file and its kernel state."""
    subnetenv.remove_subnet_env(env_file(daemon.opts, name))
    if last is None:
        return
    cidrs = network_cidrs(last[0])
    keep = [c for config, _ in others.values() for c in network_cidrs(config)]
    routes, devices = await asyncio.to_thread(remove_network_state, cidrs, keep)
    log.info("network %s removed: env file, %d routes and devices [%s] deleted",
             name, routes, ", ".join(devices))  # fmt: skip


# -- cleanup of a removed network -------------------------------------------------------------


def network_cidrs(config: NetworkConfig) -> list[IPv4Network | IPv6Network]:
    """Every CIDR the network's subnets come from."""
    cidrs: list[IPv4Network | IPv6Network] = []
    for net in [config.network, *config.networks, config.ipv6_network, *config.ipv6_networks]:
        if net is not None and net not in cidrs:
            cidrs.append(net)
    return cidrs


def _inside(address: str, prefixlen: int, cidrs: Sequence[IPv4Network | IPv6Network]) -> bool:
    addr = ip_address(address)
    return any(addr.version == c.version and addr in c for c in cidrs)


def remove_network_state(
    cidrs: Sequence[IPv4Network | IPv6Network],
    keep: Sequence[IPv4Network | IPv6Network] = (),
    netns: str | None = None,
) -> tuple[int, list[str]]:
    """Delete what a removed network's backend left in this namespace (blocking; run it
    in a thread): routes marked with flannel's protocol (75) whose destination lies inside
    ``cidrs``, and ``flannel*`` devices whose addresses all lie inside ``cidrs`` (e.g.
    vxlan's ``flannel.<VNI>``, udp's ``flannel0``). Anything also inside ``keep`` (the
    CIDRs of networks still running) is left alone. Returns (routes deleted, devices).

    This is the whole teardown contract for backends (docs/writing-a-backend.md): mark
    routes with protocol 75 and name devices ``flannel*``; no hook is needed."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from flannel.netlink.routes import RTPROT_FLANNEL

    def ours(dst: str, length: int) -> bool:
        return _inside(dst, length, cidrs) and not _inside(dst, length, keep)

    routes = 0
    devices: list[str] = []
    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        for link in ipr.get_links():
            name = str(link.get_attr("IFLA_IFNAME") or "")
            if not name.startswith("flannel"):
                continue
            addrs = [
                (str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"]))
                for a in ipr.get_addr(index=link["index"])
            ]
            addrs = [(a, n) for a, n in addrs if not ip_address(a).is_link_local]
            if addrs and all(ours(a, n) for a, n in addrs):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=link["index"])
                    devices.append(name)
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=254):
                dst = route.get_attr("RTA_DST")
                if route["proto"] != RTPROT_FLANNEL or dst is None:
                    continue
                if ours(str(dst), int(route["dst_len"])):
                    with contextlib.suppress(NetlinkError):
                        ipr.route("del", family=family, dst=str(dst),
                                  dst_len=int(route["dst_len"]), table=254,
                                  proto=RTPROT_FLANNEL)  # fmt: skip
                        routes += 1
    return routes, devices
