"""``flannel run --listen``: the daemon as the subnet-manager server (flanneld 0.7.1).

No interface lookup and no network join: the server holds the etcd connection and serves
the API (docs/remote-api.md) for the default network, for each of ``--networks``, or with
``--watch-networks`` for every network whose config exists, added and removed as configs
come and go. READY=1 is sent once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from flannel import sdnotify
from flannel.daemon import cancel_all, etcd_client_config, make_subnet_manager, probe_of
from flannel.netwatch import EtcdNetworks
from flannel.network import FatalError
from flannel.remote.server import RemoteServer, server_ssl_context

if TYPE_CHECKING:
    from flannel.daemon import Daemon

__all__ = ["run_server"]

log = logging.getLogger("flannel.remote.listen")


async def run_server(daemon: Daemon) -> None:
    """Serve the subnet-manager API (default network, or --networks / every network
    with --watch-networks); no interface lookup, no network join. READY=1 once
    listening, as flanneld 0.7.1."""
    opts = daemon.opts
    tls = None
    if opts.remote_certfile:
        try:
            tls = server_ssl_context(opts.remote_certfile, opts.remote_keyfile,
                                     opts.remote_cafile)  # fmt: skip
        except (OSError, ssl.SSLError) as exc:
            raise FatalError(f"cannot load the --remote-* TLS files: {exc}") from exc
    try:
        names = [] if opts.multi_network else [""]
        names += [] if opts.watch_networks else opts.networks
        managers = {n or "_": make_subnet_manager(opts, n) for n in names}
    except ValueError as exc:
        raise FatalError(str(exc)) from exc
    server = RemoteServer(managers)
    host, _, port = opts.listen.rpartition(":")
    try:
        bound = await server.start(host.strip("[]"), int(port), tls)
    except OSError as exc:
        raise FatalError(f"cannot listen on --listen {opts.listen}: {exc.strerror or exc}") from exc
    log.info("server mode: serving %s on %s:%d",
             ", ".join(sorted(managers)) or "no network yet", host, bound)  # fmt: skip
    sdnotify.ready()
    daemon.notified_ready = True
    # a server holds no lease, env file or backend: ready = listening + etcd reached
    r = daemon.readiness
    r.lease_held = r.subnet_env_written = r.backend_running = True
    tasks: list[asyncio.Task[None]] = []
    try:
        if opts.watch_networks:
            source = EtcdNetworks(etcd_client_config(opts), opts.etcd_prefix)
            tasks.append(asyncio.create_task(_serve_watched(daemon, server, source)))
            probe: Callable[[], Awaitable[object]] = source.list
        else:
            probe = probe_of(next(iter(managers.values())))
        tasks += await daemon.serve_health(probe)
        await server.serve_forever()
    finally:
        await cancel_all(tasks)
        for manager in list(server.managers.values()):
            with contextlib.suppress(Exception):
                await manager.close()


async def _serve_watched(daemon: Daemon, server: RemoteServer, source: EtcdNetworks) -> None:
    """--listen --watch-networks: serve every allowed network that has a config."""
    opts = daemon.opts
    try:
        async for names in source.watch():
            wanted = {n for n in names if not opts.networks or n in opts.networks}
            for name in sorted(set(server.managers) - wanted - {"_"}):
                manager = await server.remove_network(name)
                if manager is not None:
                    await manager.close()
            for name in sorted(wanted - set(server.managers)):
                await server.add_network(name, make_subnet_manager(opts, name))
    finally:
        await source.close()
