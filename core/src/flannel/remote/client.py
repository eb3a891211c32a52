"""``flannel run --remote``: a :class:`flannel.manager.SubnetManager` that talks to a
``--listen`` server over HTTP instead of to etcd.

Connection failures are retried with exponential backoff and jitter inside the watches
(the server may restart; the cursor then falls out of its log and a snapshot comes back,
which is diffed against what we knew, so no change is lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.config import NetworkConfig, parse_config
from flannel.events import Event, EventType
from flannel.lease import Lease, LeaseAttrs, encode_attrs, subnet_key
from flannel.manager import (
    ConfigNotFound,
    LeaseLost,
    OutOfSubnets,
    PreviousSubnets,
    SubnetManagerError,
)
from flannel.remote.codec import json_to_event, json_to_lease, lease_to_json
from flannel.remote.http import HttpError, request

__all__ = ["RemoteSubnetManager", "client_ssl_context"]

log = logging.getLogger("flannel.remote.client")


def client_ssl_context(cafile: str = "", certfile: str = "", keyfile: str = "") -> ssl.SSLContext:
    """Verify the server with ``cafile`` (system roots if empty); present cert/key if given."""
    context = ssl.create_default_context(cafile=cafile or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


class RemoteSubnetManager:
    """Subnet manager for network ``network_name`` ("" = default) at ``remote`` (host:port)."""

    def __init__(
        self,
        remote: str,
        network_name: str = "",
        *,
        cafile: str = "",
        certfile: str = "",
        keyfile: str = "",
        poll_timeout: float = 30.0,
    ) -> None:
        secure = bool(cafile or certfile or keyfile)
        address = remote.removeprefix("http://").removeprefix("https://").rstrip("/")
        self.base = f"{'https' if secure else 'http'}://{address}/v1/{network_name or '_'}"
        self.remote = address
        self._ssl = client_ssl_context(cafile, certfile, keyfile) if secure else None
        self.poll_timeout = poll_timeout

    async def _call(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0
    ) -> Any:
        data = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        try:
            status, raw = await request(
                method, self.base + path, data, ssl_context=self._ssl, timeout=timeout
            )
        except HttpError as exc:
            raise SubnetManagerError(
                f"flannel server {self.remote} unreachable ({exc}): check --remote and that "
                "`flannel run --listen` runs there"
            ) from None
        if status == 200:
            return json.loads(raw) if raw else None
        text = raw.decode(errors="replace").strip()
        if status == 404 and path == "/config":
            raise ConfigNotFound(f"no network config on {self.remote}: {text}")
        if status == 409:
            raise LeaseLost(text)
        if "out of subnets" in text.lower():
            raise OutOfSubnets(text)
        raise SubnetManagerError(f"flannel server {self.remote} answered {status}: {text}")

    async def _call_retrying(self, method: str, path: str, *, timeout: float) -> Any:
        delay = 0.1
        while True:
            try:
                return await self._call(method, path, timeout=timeout)
            except SubnetManagerError as exc:
                if isinstance(exc, LeaseLost | ConfigNotFound):
                    raise
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    async def get_network_config(self) -> NetworkConfig:
        status_doc = await self._call("GET", "/config")
        return parse_config(json.dumps(status_doc))

    async def acquire_lease(
        self, config: NetworkConfig, attrs: LeaseAttrs, previous: PreviousSubnets | None = None
    ) -> Lease:
        query = ""
        if previous is not None and previous.subnet is not None:
            query = "?previous=" + subnet_key(previous.subnet, previous.ipv6_subnet)
        doc = await self._call("POST", "/leases" + query, encode_attrs(attrs))
        return json_to_lease(doc)

    async def renew_lease(self, lease: Lease) -> Lease:
        return json_to_lease(await self._call("PUT", f"/leases/{lease.key}", lease_to_json(lease)))

    async def revoke_lease(self, lease: Lease) -> None:
        await self._call("DELETE", f"/leases/{lease.key}")

    async def _watch(self, path: str) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            query = f"?next={cursor}" if cursor is not None else ""
            doc = await self._call_retrying("GET", path + query, timeout=self.poll_timeout + 30)
            cursor = str(doc.get("cursor", "")) or None
            yield doc

    async def watch_leases(self, own: Lease | None) -> AsyncIterator[Sequence[Event]]:
        known: dict[str, Lease] = {}
        own_key = own.key if own is not None else None
        first = True
        async for doc in self._watch("/leases"):
            batch: list[Event] = []
            if doc.get("snapshot") is not None:
                fresh = {
                    lease.key: lease
                    for lease in map(json_to_lease, doc["snapshot"])
                    if lease.key != own_key
                }
                for key, lease in known.items():
                    if key not in fresh:
                        batch.append(Event.removed(lease))
                for key, lease in fresh.items():
                    if key not in known or known[key].attrs != lease.attrs:
                        batch.append(Event.added(lease))
                known = fresh
            for event in map(json_to_event, doc.get("events") or []):
                key = event.lease.key
                if key == own_key:
                    continue
                if event.type is EventType.ADDED:
                    before = known.get(key)
                    known[key] = event.lease
                    if before is None or before.attrs != event.lease.attrs:
                        batch.append(event)  # a renewal alone changes nothing for backends
                elif key in known:
                    batch.append(Event.removed(known.pop(key)))
            if batch or first:
                first = False
                yield batch

    async def wait_lease_lost(self, lease: Lease) -> None:
        async for doc in self._watch(f"/leases/{lease.key}"):
            if doc.get("snapshot") is not None:
                current = [json_to_lease(d) for d in doc["snapshot"]]
                if not current or current[0].attrs.public_ip != lease.attrs.public_ip:
                    return
            for event in map(json_to_event, doc.get("events") or []):
                if event.type is EventType.REMOVED:
                    return
                if event.lease.attrs.public_ip != lease.attrs.public_ip:
                    return

    async def list_leases(self) -> list[Lease]:
        doc = await self._call("GET", "/leases")
        return [json_to_lease(d) for d in doc.get("snapshot") or []]

    async def reserve(self, subnet: IPv4Network, public_ip: IPv4Address) -> Lease:
        await self._call(
            "POST", "/reservations", {"Subnet": str(subnet), "PublicIP": str(public_ip)}
        )
        return Lease(subnet=subnet, attrs=LeaseAttrs(public_ip=public_ip), expiration=None)

    async def unreserve(self, subnet: IPv4Network) -> None:
        await self._call("DELETE", f"/reservations/{subnet_key(subnet)}")

    async def close(self) -> None:
        return None
