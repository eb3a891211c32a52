"""The subnet-manager HTTP server (``flannel run --listen``): flanneld 0.7.1's API over any
:class:`flannel.manager.SubnetManager`, usually the etcd one.

Watches are long polls from an opaque cursor. Each network has one feed: a task that
consumes the manager's lease watch (itself lossless) and appends every event to a bounded
log with a sequence number. A client asking from a cursor still in the log gets every
later event; one asking from an older cursor (or none) gets a snapshot, exactly as a
0.7.1 client expects after an etcd index was cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.config import ConfigError
from flannel.events import Event, EventType
from flannel.lease import Lease, LeaseFormatError, decode_attrs, parse_subnet_key
from flannel.manager import LeaseLost, PreviousSubnets, SubnetManager, SubnetManagerError
from flannel.remote.codec import event_to_json, json_to_lease, lease_to_json
from flannel.remote.http import HttpError, Request, Response, serve

__all__ = ["DEFAULT_NETWORK", "RemoteServer", "server_ssl_context"]

log = logging.getLogger("flannel.remote.server")

DEFAULT_NETWORK = "_"
"""The URL name of the unnamed (default) network, as in flanneld 0.7.1."""


def server_ssl_context(certfile: str, keyfile: str, cafile: str = "") -> ssl.SSLContext:
    """TLS >= 1.2 with our cert; with a CA, client certificates are required and checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if cafile:
        context.load_verify_locations(cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class _Feed:
    """One network's lease state and event log, fed by the manager's watch."""

    manager: SubnetManager
    history: int = 10000
    leases: dict[str, Lease] = field(default_factory=dict)
    log: deque[tuple[int, Event]] = field(default_factory=deque)
    cursor: int = field(default_factory=lambda: time.time_ns() // 1000)
    """Starts at the wall clock in microseconds, so a cursor handed out by an earlier run
    of the server is older than this run's log and gets a snapshot, never wrong events."""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async for batch in self.manager.watch_leases(None):
            async with self.changed:
                for event in batch:
                    self.cursor += 1
                    self.log.append((self.cursor, event))
                    if event.type is EventType.ADDED:
                        self.leases[event.lease.key] = event.lease
                    else:
                        self.leases.pop(event.lease.key, None)
                while len(self.log) > self.history:
                    self.log.popleft()
                self.ready.set()
                self.changed.notify_all()

    def oldest(self) -> int:
        return self.log[0][0] - 1 if self.log else self.cursor

    async def wait_after(
        self, cursor: int | None, timeout: float, key: str | None
    ) -> dict[str, Any]:
        """Events after ``cursor`` (long-poll up to ``timeout``), or a snapshot."""
        await self.ready.wait()
        if cursor is None or cursor < self.oldest() or cursor > self.cursor:
            snapshot = [
                lease_to_json(lease)
                for k, lease in sorted(self.leases.items())
                if key is None or k == key
            ]
            return {"events": None, "snapshot": snapshot, "cursor": str(self.cursor)}
        deadline = asyncio.get_running_loop().time() + timeout
        async with self.changed:
            while True:
                events = [
                    event_to_json(ev)
                    for seq, ev in self.log
                    if seq > cursor and (key is None or ev.lease.key == key)
                ]
                if events:
                    return {"events": events, "snapshot": None, "cursor": str(self.cursor)}
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return {"events": [], "snapshot": None, "cursor": str(self.cursor)}
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), remaining)


class RemoteServer:
    """Serves ``managers`` (URL network name -> manager; ``_`` is the default network)."""

    def __init__(
        self,
        managers: Mapping[str, SubnetManager],
        *,
        poll_timeout: float = 30.0,
        history: int = 10000,
    ) -> None:
        self.managers = dict(managers)
        self.poll_timeout = poll_timeout
        self.history = history
        self.feeds = {name: _Feed(m, history) for name, m in self.managers.items()}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._server: asyncio.Server | None = None
        self._started = False
        self._version = time.time_ns() // 1000
        self._networks_changed = asyncio.Condition()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Start the feeds and the listener; returns the bound port."""
        self._started = True
        for name in self.feeds:
            self._start_feed(name)
        self._server = await serve(self.handle, host, port, ssl_context)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("serving the subnet manager API on %s:%d%s", host, bound,
                 " (TLS)" if ssl_context else "")  # fmt: skip
        return bound

    def _start_feed(self, name: str) -> None:
        feed = self.feeds[name]
        self._tasks[name] = asyncio.create_task(feed.run(), name=f"remote-feed-{name}")

    async def add_network(self, name: str, manager: SubnetManager) -> None:
        """Serve one more network (``--watch-networks``: its config appeared)."""
        if name in self.feeds:
            return
        self.managers[name] = manager
        self.feeds[name] = _Feed(manager, self.history)
        if self._started:
            self._start_feed(name)
        await self._networks_moved()

    async def remove_network(self, name: str) -> SubnetManager | None:
        """Stop serving a network (its config went away); returns its manager to close."""
        self.feeds.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._networks_moved()
        return self.managers.pop(name, None)

    async def _networks_moved(self) -> None:
        async with self._networks_changed:
            self._version += 1
            self._networks_changed.notify_all()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def serve_forever(self) -> None:
        """Run until cancelled; a feed that dies (watch failure) ends the server."""
        try:
            while True:
                tasks = set(self._tasks.values())
                waiter = asyncio.ensure_future(self._wait_moved())
                try:
                    done, _ = await asyncio.wait(
                        tasks | {waiter}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                for task in done - {waiter}:
                    if task in self._tasks.values():
                        task.result()  # a feed ended: re-raise why
        finally:
            await self.close()

    async def _wait_moved(self) -> None:
        async with self._networks_changed:
            await self._networks_changed.wait()

    # -- routing --------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        if not parts or parts[0] != "v1":
            raise HttpError(404, f"no such path {request.path}: the API lives under /v1/")
        rest = parts[1:]
        log.debug("%s %s from %s", request.method, request.path, request.peer)
        try:
            if not rest:
                return await self._networks(request)
            feed = self.feeds.get(rest[0])
            if feed is None:
                raise HttpError(404, f"unknown network {rest[0]!r}: known are {sorted(self.feeds)}")
            return await self._network(request, feed, rest[1:])
        except (LeaseFormatError, ConfigError, json.JSONDecodeError) as exc:
            raise HttpError(400, str(exc)) from None
        except LeaseLost as exc:
            raise HttpError(409, str(exc)) from None
        except SubnetManagerError as exc:
            raise HttpError(500, str(exc)) from None

    async def _networks(self, request: Request) -> Response:
        if request.method != "GET":
            raise HttpError(405, "only GET is allowed here")
        cursor = _cursor(request.query.get("next"))
        if cursor == self._version:  # long-poll until the network set changes
            async with self._networks_changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._networks_changed.wait(), self.poll_timeout)
        # Always a snapshot (a 0.7.1 client accepts one after any cursor): names are few.
        return Response.json(
            {"events": None, "snapshot": sorted(self.feeds), "cursor": str(self._version)}
        )

    async def _network(self, request: Request, feed: _Feed, rest: Sequence[str]) -> Response:
        manager = feed.manager
        method = request.method
        if rest == ["config"] and method == "GET":
            raw = await _config_raw(manager)
            return Response(200, raw)
        if rest == ["leases"] and method == "POST":
            attrs = decode_attrs(request.body)
            previous = _previous(request.query.get("previous"))
            config = await manager.get_network_config()
            lease = await manager.acquire_lease(config, attrs, previous)
            return Response.json(lease_to_json(lease))
        if rest == ["leases"] and method == "GET":
            cursor = _cursor(request.query.get("next"))
            return Response.json(await feed.wait_after(cursor, self.poll_timeout, None))
        if len(rest) == 2 and rest[0] == "leases":
            key = _key(rest[1])
            if method == "PUT":
                lease = json_to_lease(json.loads(request.body or b"{}"))
                if lease.key != key:
                    raise HttpError(400, f"lease body is for {lease.key}, URL names {key}")
                return Response.json(lease_to_json(await manager.renew_lease(lease)))
            if method == "GET":
                cursor = _cursor(request.query.get("next"))
                return Response.json(await feed.wait_after(cursor, self.poll_timeout, key))
            if method == "DELETE":
                revoke = getattr(manager, "revoke_lease", None)
                held = feed.leases.get(key)
                if held is None or revoke is None:
                    raise HttpError(404, f"no lease {key}")
                await revoke(held)
                return Response(200, b"")
        if rest == ["reservations"] and method == "GET":
            leases = await manager.list_leases()
            return Response.json([
                {"Subnet": str(lease.subnet), "PublicIP": str(lease.attrs.public_ip)}
                for lease in leases if lease.is_reservation
            ])  # fmt: skip
        if rest == ["reservations"] and method == "POST":
            doc = json.loads(request.body or b"{}")
            try:
                subnet = IPv4Network(str(doc.get("Subnet")))
                public_ip = IPv4Address(str(doc.get("PublicIP")))
            except ValueError as exc:
                raise HttpError(400, f"bad reservation: {exc}") from None
            await manager.reserve(subnet, public_ip)
            return Response(200, b"")
        if len(rest) == 2 and rest[0] == "reservations" and method == "DELETE":
            reserved, _ = parse_subnet_key(_key(rest[1]))
            if reserved is None:
                raise HttpError(400, "bad subnet")
            await manager.unreserve(reserved)
            return Response(200, b"")
        raise HttpError(404, f"no route for {method} /v1/.../{'/'.join(rest)}")


async def _config_raw(manager: SubnetManager) -> bytes:
    get_raw = getattr(manager, "get_config_raw", None)
    if get_raw is not None:
        raw = await get_raw()
        if raw is None:
            raise HttpError(
                404, "no network config in etcd yet: create it with `flannel config set`"
            )
        return bytes(raw)
    config = await manager.get_network_config()
    return config.raw


def _cursor(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise HttpError(
            400, f"bad cursor {text!r}: use the cursor a previous answer gave"
        ) from None


def _key(text: str) -> str:
    try:
        v4, v6 = parse_subnet_key(text)
    except LeaseFormatError:
        raise HttpError(400, f"bad subnet key {text!r}: expected e.g. 10.1.5.0-24") from None
    return Lease(subnet=v4, ipv6_subnet=v6).key


def _previous(text: str | None) -> PreviousSubnets | None:
    if not text:
        return None
    v4, v6 = parse_subnet_key(_key(text))
    return PreviousSubnets(subnet=v4, ipv6_subnet=v6)
