"""Which networks exist (flanneld 0.7.1 multi-network mode): a network is a config key
``<prefix>/<name>/config``.

:class:`EtcdNetworks` lists them in one ranged read and follows them with a recursive etcd
watch of the prefix (any put or delete of a ``.../config`` key triggers a re-list, so a
missed or compacted event can never leave us wrong). :class:`RemoteNetworks` asks a
``--listen`` server (``GET /v1/`` long polls). Both yield the whole current set of names,
so the caller diffs sets instead of trusting single events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol

from flannel.etcd import EtcdClient, EtcdClientConfig, EtcdConnection

__all__ = ["EtcdNetworks", "NetworkSource", "RemoteNetworks", "network_names"]

log = logging.getLogger("flannel.netwatch")


class NetworkSource(Protocol):
    def watch(self) -> AsyncIterator[set[str]]:
        """The set of network names now, then again after every change (possibly the same
        set, when a config was rewritten); forever. Retries failures itself (backoff)."""
        ...

    async def close(self) -> None: ...


def _base(prefix: str) -> str:
    return "/" + prefix.strip("/") if prefix.strip("/") else ""


def network_names(prefix: str, keys: list[bytes]) -> set[str]:
    """Names ``n`` for which ``<prefix>/n/config`` is among ``keys``."""
    pattern = re.compile(re.escape(_base(prefix)) + r"/([^/]+)/config")
    names = set()
    for key in keys:
        match = pattern.fullmatch(key.decode(errors="replace"))
        if match and match.group(1) not in ("subnets",):
            names.add(match.group(1))
    return names


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


class _Pause:
    def __init__(self) -> None:
        self.delay = 0.2

    async def __call__(self, what: str, exc: BaseException) -> None:
        log.warning("%s failed (retrying in %.1f s): %s", what, self.delay, exc)
        await asyncio.sleep(self.delay * random.uniform(0.5, 1.0))
        self.delay = min(self.delay * 2, 10.0)

    def reset(self) -> None:
        self.delay = 0.2


class EtcdNetworks:
    """The networks under ``prefix`` in etcd."""

    def __init__(self, client_config: EtcdClientConfig, prefix: str) -> None:
        self.conn = EtcdConnection(client_config)
        self.prefix = prefix
        self.key = (_base(prefix) + "/").encode()

    async def list(self) -> tuple[set[str], int]:
        """The network names and the etcd revision of the read."""
        from aetcd import rpc

        async def op(c: EtcdClient) -> Any:
            return await c.kvstub.Range(
                rpc.RangeRequest(key=self.key, range_end=_prefix_end(self.key), keys_only=True),
                timeout=c.request_timeout,
                metadata=c.metadata,
            )

        resp = await self.conn.call("list networks", op)
        return network_names(self.prefix, [bytes(kv.key) for kv in resp.kvs]), int(
            resp.header.revision
        )

    async def _config_changes(self, start_revision: int) -> AsyncIterator[None]:
        """Yield once per watch response that touches a ``.../config`` key."""
        import grpc
        from aetcd import rpc

        client, generation = await self.conn.client()
        create = rpc.WatchCreateRequest(
            key=self.key, range_end=_prefix_end(self.key), start_revision=start_revision
        )
        call = client.watchstub.Watch(metadata=(*(client.metadata or ()), ("hasleader", "true")))
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF or resp.canceled or resp.compact_revision:
                    raise ConnectionError("etcd ended the network watch")
                if any(bytes(ev.kv.key).endswith(b"/config") for ev in resp.events):
                    yield None
        except grpc.aio.AioRpcError as exc:
            await self.conn.reset(generation, exc)
            raise ConnectionError(exc.details() or exc.code().name) from None
        finally:
            call.cancel()

    async def watch(self) -> AsyncIterator[set[str]]:
        pause = _Pause()
        last: set[str] | None = None
        while True:
            try:
                names, revision = await self.list()
                if names != last:
                    last = names
                    yield set(names)
                pause.reset()
                async for _ in self._config_changes(revision + 1):
                    # yield even when the set is unchanged: a config rewritten in place
                    # lets the caller retry a network that failed on the old one
                    last, revision = await self.list()
                    yield set(last)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await pause("watching the networks in etcd", exc)

    async def close(self) -> None:
        await self.conn.close()


class RemoteNetworks:
    """The networks a ``--listen`` server serves (``GET /v1/``, long-polled)."""

    def __init__(self, remote: str, ssl_context: ssl.SSLContext | None) -> None:
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{remote}/v1/"
        self.ssl_context = ssl_context

    async def list(self) -> set[str]:
        """The names the server serves now (also the health probe)."""
        from flannel.remote.http import request

        status, body = await request("GET", self.url, ssl_context=self.ssl_context, timeout=30)
        if status != 200:
            raise ConnectionError(f"{self.url} answered {status}: {body[:200]!r}")
        return {n for n in json.loads(body).get("snapshot") or [] if n != "_"}

    async def watch(self) -> AsyncIterator[set[str]]:
        from flannel.remote.http import request

        pause = _Pause()
        cursor = ""
        last: set[str] | None = None
        while True:
            try:
                url = self.url + (f"?next={cursor}" if cursor else "")
                status, body = await request("GET", url, ssl_context=self.ssl_context, timeout=90)
                if status != 200:
                    raise ConnectionError(f"server answered {status}: {body[:200]!r}")
                doc = json.loads(body)
                cursor = str(doc.get("cursor") or "")
                names = {n for n in doc.get("snapshot") or [] if n != "_"}
                pause.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cursor = ""
                await pause(f"listing the networks at {self.url}", exc)
                continue
            if names != last:
                last = names
                yield set(names)

    async def close(self) -> None:
        return None
