"""The daemon: options -> subnet manager -> interface -> network lifecycle; signals; exits.

Three modes: one network (default); several networks (``--networks``/``--watch-networks``,
:mod:`flannel.multinet`); the subnet-manager server (``--listen``,
:mod:`flannel.remote.listen`). ``--remote`` swaps etcd for a server in the first two.

Exit codes (``flanneld`` and ``flannel run``):

* 0: stopped by SIGTERM/SIGINT (or ``--version``/``--help``);
* 1: fatal setup error: malformed network config at startup, unknown or broken backend
  plugin, no usable interface, bad etcd TLS/auth flags, health port in use; one line on
  stderr (``flanneld: error: ...``, or ``flannel run: error: ...``);
* 2: usage error (unknown flag, bad flag or ``FLANNELD_*`` value).

A *missing* network config is not fatal: the daemon logs it and waits, retrying with
backoff. After the first successful start nothing is fatal: a config turned invalid, a lost
lease or a failing backend are retried in-process.

Beside the network the daemon runs the health server (``--healthz-port``) with an etcd
probe, and keeps the masquerade/forward rules (``--ip-masq``, ``--iptables-forward-rules``)
for as long as the network is up. Everything this module imports stays lean (no
typer/rich/pydantic); pyroute2 and the iptables code load on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flannel import __version__, sdnotify
from flannel.backend import BackendNetwork, ExternalInterface
from flannel.config import NetworkConfig
from flannel.lease import Lease
from flannel.manager import PreviousSubnets, SubnetManager
from flannel.metrics import Metrics
from flannel.network import (
    Backoff,
    Companion,
    FatalError,
    LifecycleSettings,
    NetworkLifecycle,
    NetworksReadiness,
    Readiness,
)
from flannel.options import DaemonOptions
from flannel.plugins.host import PluginHost

if TYPE_CHECKING:
    from flannel.etcd import EtcdClientConfig

__all__ = ["Daemon", "configure_logging", "run_daemon"]

log = logging.getLogger("flannel.daemon")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2


def configure_logging(opts: DaemonOptions) -> None:
    """stderr logging (:mod:`flannel.logs`); the etcd password is redacted everywhere."""
    from flannel.logs import setup_logging

    secrets = [opts.etcd_password] if opts.etcd_password else []
    setup_logging(opts.v, opts.log_format, secrets=secrets)


# -- adapters to the other core modules (kept in one place) ----------------------------------


def etcd_client_config(opts: DaemonOptions) -> EtcdClientConfig:
    """The etcd connection flags as a client config (raises ValueError on bad flags)."""
    from flannel.etcd import EtcdClientConfig

    return EtcdClientConfig.from_flags(
        opts.etcd_endpoints,
        ca_file=opts.etcd_cafile,
        cert_file=opts.etcd_certfile,
        key_file=opts.etcd_keyfile,
        username=opts.etcd_username,
        password=opts.etcd_password,
    )


def make_subnet_manager(opts: DaemonOptions, network_name: str = "") -> SubnetManager:
    """The subnet manager for one network: the ``--remote`` server's API, else etcd
    (raises ValueError on bad etcd or TLS flags)."""
    if opts.remote:
        from flannel.remote.client import RemoteSubnetManager

        try:
            return RemoteSubnetManager(
                opts.remote, network_name, cafile=opts.remote_cafile,
                certfile=opts.remote_certfile, keyfile=opts.remote_keyfile,
            )  # fmt: skip
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the --remote-* TLS files: {exc}") from exc
    from flannel.etcd_manager import EtcdSubnetManager

    return EtcdSubnetManager(
        etcd_client_config(opts), opts.etcd_prefix, lease_ttl=opts.lease_ttl,
        network_name=network_name,
    )  # fmt: skip


def env_file(opts: DaemonOptions, network_name: str = "") -> Path:
    """``--subnet-file`` for the default network, ``<subnet-dir>/<name>.env`` otherwise."""
    return opts.subnet_dir / f"{network_name}.env" if network_name else opts.subnet_file


def read_previous(opts: DaemonOptions, network_name: str = "") -> PreviousSubnets | None:
    from flannel import subnetenv

    return subnetenv.read_subnet_env(env_file(opts, network_name)).previous


def subnet_env_writer(
    opts: DaemonOptions, network_name: str = ""
) -> Callable[[NetworkConfig, Lease, int], None]:
    from flannel import subnetenv

    path = env_file(opts, network_name)

    def write(config: NetworkConfig, lease: Lease, mtu: int) -> None:
        subnetenv.write_subnet_env(path, config, lease, mtu, opts.ip_masq)

    return write


def interface_finder(
    opts: DaemonOptions,
) -> Callable[[NetworkConfig], Awaitable[ExternalInterface]]:
    """Find the external interface for a config, and refuse a Network overlapping it."""
    from flannel import iface

    def find_sync(config: NetworkConfig) -> ExternalInterface:
        try:
            ext = iface.lookup_ext_iface(
                ifaces=opts.iface,
                iface_regexes=opts.iface_regex,
                iface_can_reach=opts.iface_can_reach,
                public_ip=str(opts.public_ip) if opts.public_ip else None,
                public_ipv6=str(opts.public_ipv6) if opts.public_ipv6 else None,
                ipv4=config.enable_ipv4,
                ipv6=config.enable_ipv6,
            )
        except iface.InterfaceError as exc:
            raise FatalError(str(exc)) from exc
        iface.check_network_overlap(config, iface.interface_addresses(ext.index), ext.name)
        return ext

    async def find(config: NetworkConfig) -> ExternalInterface:
        return await asyncio.to_thread(find_sync, config)

    return find


# -- the daemon --------------------------------------------------------------------------------


class Daemon:
    """One flanneld process: owns the shared state (metrics, readiness) the ops code reads."""

    def __init__(
        self,
        opts: DaemonOptions,
        *,
        host: PluginHost | None = None,
        manager: SubnetManager | None = None,
        find_interface: Callable[[NetworkConfig], Awaitable[ExternalInterface]] | None = None,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.opts = opts
        self.metrics = Metrics()
        self.readiness: Readiness = (
            NetworksReadiness(metrics=self.metrics)
            if opts.multi_network and not opts.listen
            else Readiness(metrics=self.metrics)
        )
        self.readiness.masq_in_place = False if opts.ip_masq else None
        self.host = host
        self.manager = manager
        self.find_interface = find_interface
        self.companions = list(companions)
        if opts.ip_masq or opts.iptables_forward_rules:
            self.companions.append(self.keep_masq_rules)
        self.started = time.time()
        self.notified_ready = False

    def _on_ready(self, network: BackendNetwork) -> None:
        if not self.notified_ready:
            self.notified_ready = True
            sdnotify.ready()

    async def keep_masq_rules(self, network: BackendNetwork) -> None:
        """Install the masquerade/forward rules for the network, keep them, remove them.

        Errors are logged and retried with backoff (``/readyz`` says the rules are missing);
        they never take the network down.
        """
        from flannel.ipmasq import CommandError, MasqError, MasqManager

        opts, config, lease = self.opts, network.ctx.network, network.lease
        net4 = (config.networks[0] if config.networks else config.network) if lease.subnet else None
        net6 = None
        if lease.ipv6_subnet is not None:
            net6 = config.ipv6_networks[0] if config.ipv6_networks else config.ipv6_network
        masq = MasqManager(
            net4, lease.subnet, ipv6_network=net6, ipv6_subnet=lease.ipv6_subnet,
            masq=opts.ip_masq, forward=opts.iptables_forward_rules,
            backend=opts.masq_backend, metrics=self.metrics, name=network.ctx.network_name,
        )  # fmt: skip
        backoff = Backoff(1.0, 30.0)
        try:
            while True:
                try:
                    await masq.apply()
                    break
                except (MasqError, CommandError, OSError) as exc:
                    log.error("masquerade/forward rules not installed (retrying): %s", exc)
                    await asyncio.sleep(backoff.next())
            if opts.ip_masq:
                self.readiness.masq_in_place = True
            await masq.resync_loop(opts.iptables_resync)
        finally:
            if opts.ip_masq:
                self.readiness.masq_in_place = False
            try:
                await masq.teardown()
            except (MasqError, CommandError, OSError) as exc:
                log.warning("removing the masquerade/forward rules failed: %s", exc)

    async def serve_health(
        self, probe: Callable[[], Awaitable[object]]
    ) -> list[asyncio.Task[None]]:
        opts = self.opts
        if opts.healthz_port <= 0:
            return []
        from flannel.health import HealthServer, etcd_probe_loop

        server = HealthServer(opts.healthz_ip, opts.healthz_port, self.readiness, self.metrics)
        try:
            await server.start()
        except OSError as exc:
            raise FatalError(str(exc.strerror or exc)) from exc
        return [
            asyncio.create_task(server.serve(), name="health-server"),
            asyncio.create_task(etcd_probe_loop(probe, self.readiness), name="etcd-probe"),
        ]

    async def run(self) -> None:
        """Run until cancelled; raises :class:`FatalError` for errors needing the operator."""
        opts = self.opts
        log.info("flannel %s starting: %s", __version__, opts.describe())
        if opts.listen:
            await self._run_server()
            return
        host = self.host or PluginHost.load()
        self.host = host
        log.info("backend types available: %s", ", ".join(host.types()) or "none")
        for info in host.plugins:
            if info.status not in ("ok", "disabled"):
                log.warning("%s is unusable: %s", info.label, info.error)
        if opts.multi_network:
            await self._run_networks(host)
            return
        try:
            manager = self.manager or make_subnet_manager(opts)
        except ValueError as exc:  # bad endpoints, TLS/auth flags
            raise FatalError(str(exc)) from exc
        tasks: list[asyncio.Task[None]] = []
        try:
            tasks = await self.serve_health(probe_of(manager))
            await self.lifecycle(host, manager, "", self.readiness, self._on_ready).run()
        finally:
            await cancel_all(tasks)
            with contextlib.suppress(Exception):
                await manager.close()

    def lifecycle(
        self,
        host: PluginHost,
        manager: SubnetManager,
        name: str,
        readiness: Readiness,
        on_ready: Callable[[BackendNetwork], None] | None,
    ) -> NetworkLifecycle:
        """The lifecycle of network ``name`` ("" = default) with this daemon's ops wiring
        (metrics, masquerade companion, env file under --subnet-file or --subnet-dir)."""
        opts = self.opts
        return NetworkLifecycle(
            manager,
            host,
            self.find_interface or interface_finder(opts),
            subnet_env_writer(opts, name),
            previous=read_previous(opts, name),
            settings=LifecycleSettings(
                renew_margin=opts.subnet_lease_renew_margin * 60.0,
                options=opts.backend_view(),
                network_name=name,
            ),
            metrics=self.metrics,
            readiness=readiness,
            on_ready=on_ready,
            companions=self.companions,
        )

    # -- the other modes (their own modules) -------------------------------------------------

    async def _run_networks(self, host: PluginHost) -> None:
        from flannel.multinet import run_networks

        await run_networks(self, host)

    async def _run_server(self) -> None:
        from flannel.remote.listen import run_server

        await run_server(self)


def probe_of(manager: SubnetManager) -> Callable[[], Awaitable[object]]:
    probe: Callable[[], Awaitable[object]] = (
        getattr(manager, "get_config_raw", None) or manager.list_leases
    )
    return probe


async def cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _main(daemon: Daemon) -> None:
    """Run the daemon; the first SIGTERM/SIGINT cancels it, a second one kills the process."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def on_signal(signum: int) -> None:
        nonlocal stopping
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if not stopping:
            stopping = True
            log.info("received %s, shutting down", signal.Signals(signum).name)
            sdnotify.stopping()
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await daemon.run()
    except (Exception, asyncio.CancelledError) as exc:
        if not stopping:
            raise
        if not isinstance(exc, asyncio.CancelledError):  # e.g. grpc's CANCELLED
            log.debug("error while stopping: %s", exc)
        log.info("stopped")


def run_daemon(opts: DaemonOptions, daemon: Daemon | None = None, prog: str = "flanneld") -> int:
    """Run the daemon in a fresh event loop and return the process exit code."""
    daemon = daemon or Daemon(opts)
    try:
        asyncio.run(_main(daemon))
    except FatalError as exc:
        log.debug("fatal error", exc_info=True)
        sdnotify.stopping()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:  # a second signal during shutdown
        return EXIT_OK
    except Exception as exc:
        log.error("unexpected error", exc_info=opts.v >= 1)
        sdnotify.stopping()
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK
