"""Raw etcd operations on flannel's key layout: config, lease keys, transactions, watches.

Layout (flanneld v0.20, byte for byte): ``<prefix>/config`` holds the network config JSON,
``<prefix>/subnets/<key>`` a lease (value = :func:`flannel.lease.encode_attrs`). A lease key
attached to an etcd lease expires with it; a key with no etcd lease is a *reservation* and
never expires. Listing is ONE ranged read: the etcd lease id in each key-value tells a lease
from a reservation, so unlike flanneld there is no TimeToLive RPC per key.

Leases read by :meth:`Registry.list_leases` or from a watch carry ``expiration=math.inf`` for
ordinary leases (remaining TTL not looked up; use :meth:`Registry.remaining_ttl`) and ``None``
for reservations.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import grpc
from aetcd import rpc

from flannel.etcd import EtcdClient, EtcdConnection, EtcdError, channel_closed_under_us
from flannel.lease import (
    Lease,
    LeaseAttrs,
    LeaseFormatError,
    decode_attrs,
    encode_attrs,
    parse_subnet_key,
    subnet_key,
)

__all__ = [
    "DEFAULT_PREFIX",
    "KeyEvent",
    "LeaseList",
    "LeaseScan",
    "Registry",
    "WatchBatch",
    "WatchCompacted",
    "WatchStreamError",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"

# A canonical IPv4 key: octets 0-255 without leading zeros, prefix 0-32.
_OCTET = rb"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_FAST_V4_KEY = re.compile(rb"\.".join([_OCTET] * 4) + rb"-(3[0-2]|[12]?[0-9])")


class WatchCompacted(EtcdError):
    """The watch start revision was compacted away; relist and diff."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd watch revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


class WatchStreamError(EtcdError):
    """The watch stream ended or was cancelled by etcd; reconnect and resume."""


@dataclass(frozen=True)
class LeaseList:
    """Every readable lease under ``subnets/`` at ``revision`` (one consistent read)."""

    leases: list[Lease]
    revision: int
    skipped: int = 0


@dataclass(frozen=True)
class LeaseScan:
    """A cheap view of ``subnets/`` for allocation (one read, values mostly not decoded).

    ``v4_spans`` are the ``(first, last)`` addresses of every readable key's IPv4 subnet,
    ``v6_subnets`` the IPv6 ones; ``matching`` holds the fully decoded leases whose value
    contains the needle (our public IP), the only ones acquire must look into.
    """

    revision: int
    count: int
    v4_spans: list[tuple[int, int]]
    v6_subnets: list[IPv6Network]
    matching: list[Lease]


@dataclass(frozen=True)
class KeyEvent:
    """One raw watch event under ``subnets/``: ``lease`` is None when it could not be read
    (malformed key or value; already warned about)."""

    key: str
    deleted: bool
    lease: Lease | None
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    """All events of one watch response. ``next_revision`` is where a new watch must start
    to miss nothing: the last event's revision + 1, or header revision + 1 for a progress
    notification. (etcd caps a catch-up response at 1000 revisions but still reports the
    current revision in its header, so the header alone is not a safe resume point.)"""

    events: list[KeyEvent]
    next_revision: int


def _join(prefix: str, *parts: str) -> str:
    """Path-join like Go's path.Join for our keys (a trailing slash is harmless)."""
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    return "/".join([base, *parts])


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class Registry:
    """flannel's etcd keys for one network (``prefix``, or ``prefix/<network_name>``)."""

    def __init__(self, conn: EtcdConnection, prefix: str = DEFAULT_PREFIX, network_name: str = ""):
        self.conn = conn
        base = _join(prefix, network_name) if network_name else _join(prefix)
        self.prefix = base
        self.config_key = f"{base}/config".encode()
        self.subnets_prefix = f"{base}/subnets/".encode()
        self._warned: set[tuple[str, int]] = set()
        self._decoded: dict[bytes, tuple[int, Lease | None]] = {}

    # --- keys and decoding -------------------------------------------------------------

    def lease_key(self, subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None) -> bytes:
        return self.subnets_prefix + subnet_key(subnet, ipv6_subnet).encode()

    def decode(self, key: bytes, value: bytes, mod_revision: int, lease_id: int) -> Lease:
        """Turn one key-value into a Lease; raises LeaseFormatError."""
        if not key.startswith(self.subnets_prefix):
            raise LeaseFormatError(f"key {key!r} is not under {self.subnets_prefix!r}")
        try:
            name = key[len(self.subnets_prefix) :].decode()
        except UnicodeDecodeError:
            raise LeaseFormatError(f"lease key {key!r} is not UTF-8") from None
        subnet, ipv6_subnet = parse_subnet_key(name)
        attrs = decode_attrs(value)
        return Lease(
            subnet=subnet,
            ipv6_subnet=ipv6_subnet,
            attrs=attrs,
            expiration=None if lease_id == 0 else math.inf,
            etcd_lease_id=lease_id,
            mod_revision=mod_revision,
        )

    def warn_malformed(self, key: bytes, mod_revision: int, problem: str) -> None:
        """Warn once per (key, revision) about an entry flannel cannot use."""
        text = key.decode(errors="replace")
        marker = (text, mod_revision)
        if marker in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add(marker)
        log.warning(
            "skipping unusable lease %s (revision %d): %s; fix or delete the key",
            text,
            mod_revision,
            problem,
        )

    def decode_kv(self, kv: Any) -> Lease | None:
        """Decode one key-value, or warn (once) and return None.

        Results are cached by key and ``mod_revision`` (which names one write of one key),
        so relists decode only what changed. The cache holds the keys of the last full
        listing plus later watch events."""
        key = bytes(kv.key)
        hit = self._decoded.get(key)
        if hit is not None and hit[0] == kv.mod_revision:
            return hit[1]
        try:
            lease: Lease | None = self.decode(key, kv.value, kv.mod_revision, kv.lease)
        except LeaseFormatError as exc:
            self.warn_malformed(key, kv.mod_revision, str(exc))
            lease = None
        self._decoded[key] = (kv.mod_revision, lease)
        return lease

    # --- config ------------------------------------------------------------------------

    async def get_config(self) -> bytes | None:
        async def op(c: EtcdClient) -> bytes | None:
            resp = await c.kvstub.Range(
                rpc.RangeRequest(key=self.config_key),
                timeout=c.request_timeout,
                metadata=c.metadata,
            )
            return bytes(resp.kvs[0].value) if resp.kvs else None

        return await self.conn.call("get config", op)

    async def put_config(self, raw: bytes) -> None:
        async def op(c: EtcdClient) -> None:
            await c.kvstub.Put(
                rpc.PutRequest(key=self.config_key, value=raw),
                timeout=c.request_timeout,
                metadata=c.metadata,
            )

        await self.conn.call("put config", op)

    # --- reads -------------------------------------------------------------------------

    async def _range_subnets(self) -> Any:
        async def op(c: EtcdClient) -> Any:
            return await c.kvstub.Range(
                rpc.RangeRequest(
                    key=self.subnets_prefix, range_end=_prefix_end(self.subnets_prefix)
                ),
                timeout=c.request_timeout,
                metadata=c.metadata,
            )

        return await self.conn.call("list leases", op)

    def key_span(self, key: bytes) -> tuple[tuple[int, int] | None, IPv6Network | None]:
        """The IPv4 ``(first, last)`` addresses and the IPv6 subnet a lease key names.

        The common ``a.b.c.d-len`` key is parsed with integer arithmetic (10,000 keys in a
        few ms); anything else goes through :func:`flannel.lease.parse_subnet_key`, which
        decides validity. Raises LeaseFormatError.
        """
        start = len(self.subnets_prefix)
        m = _FAST_V4_KEY.fullmatch(key, start)
        if m is not None:
            a, b, c, d, plen = map(int, m.groups())
            addr = (a << 24) | (b << 16) | (c << 8) | d
            host_mask = (1 << (32 - plen)) - 1
            if addr and not addr & host_mask:  # 0.0.0.0-0 (IPv6-only) takes the slow path
                return (addr, addr | host_mask), None
        if not key.startswith(self.subnets_prefix):
            raise LeaseFormatError(f"key {key!r} is not under {self.subnets_prefix!r}")
        try:
            name = key[start:].decode()
        except UnicodeDecodeError:
            raise LeaseFormatError(f"lease key {key!r} is not UTF-8") from None
        subnet, ipv6_subnet = parse_subnet_key(name)
        span = (
            (int(subnet.network_address), int(subnet.broadcast_address))
            if subnet is not None
            else None
        )
        return span, ipv6_subnet

    async def scan(self, needle: bytes | None) -> LeaseScan:
        """One ranged read for allocation; only values containing ``needle`` are decoded."""
        resp = await self._range_subnets()
        spans: list[tuple[int, int]] = []
        v6: list[IPv6Network] = []
        matching: list[Lease] = []
        for kv in resp.kvs:
            try:
                span, ipv6_subnet = self.key_span(kv.key)
            except LeaseFormatError as exc:
                self.warn_malformed(kv.key, kv.mod_revision, str(exc))
                continue
            # A key with an unreadable value still occupies its subnet: count it as taken.
            if span is not None:
                spans.append(span)
            if ipv6_subnet is not None:
                v6.append(ipv6_subnet)
            if needle is not None and needle in kv.value:
                lease = self.decode_kv(kv)
                if lease is not None:
                    matching.append(lease)
        return LeaseScan(
            revision=resp.header.revision,
            count=len(resp.kvs),
            v4_spans=spans,
            v6_subnets=v6,
            matching=matching,
        )

    async def list_leases(self) -> LeaseList:
        """One ranged read of ``subnets/``; malformed entries are skipped with a warning."""
        resp = await self._range_subnets()
        leases: list[Lease] = []
        skipped = 0
        previous, self._decoded = self._decoded, {}
        for kv in resp.kvs:
            hit = previous.get(kv.key)
            if hit is not None and hit[0] == kv.mod_revision:
                self._decoded[kv.key] = hit
                lease = hit[1]
            else:
                lease = self.decode_kv(kv)
            if lease is None:
                skipped += 1
            else:
                leases.append(lease)
        return LeaseList(leases=leases, revision=resp.header.revision, skipped=skipped)

    async def get_key(self, key: bytes) -> tuple[Any | None, int]:
        """The raw key-value (or None) and the read revision."""

        async def op(c: EtcdClient) -> Any:
            return await c.kvstub.Range(
                rpc.RangeRequest(key=key), timeout=c.request_timeout, metadata=c.metadata
            )

        resp = await self.conn.call("get lease", op)
        return (resp.kvs[0] if resp.kvs else None), resp.header.revision

    async def get_lease(
        self, subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None = None
    ) -> Lease | None:
        """Read one lease (None if absent or unreadable)."""
        kv, _ = await self.get_key(self.lease_key(subnet, ipv6_subnet))
        return None if kv is None else self.decode_kv(kv)

    async def remaining_ttl(self, etcd_lease_id: int) -> float | None:
        """Seconds left on an etcd lease (None if it no longer exists)."""

        async def op(c: EtcdClient) -> Any:
            return await c.leasestub.LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=etcd_lease_id),
                timeout=c.request_timeout,
                metadata=c.metadata,
            )

        resp = await self.conn.call("lease time-to-live", op)
        return None if resp.TTL < 0 else float(resp.TTL)

    # --- writes ------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A fresh etcd lease of ``ttl`` seconds; its id."""
        return (await self.grant_with_expiry(ttl))[0]

    async def grant_with_expiry(self, ttl: int) -> tuple[int, float]:
        """A fresh etcd lease: its id and expiry time (etcd may raise a tiny TTL)."""
        started = time.time()

        async def op(c: EtcdClient) -> Any:
            return await c.leasestub.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl), timeout=c.request_timeout, metadata=c.metadata
            )

        resp = await self.conn.call("grant lease", op)
        if resp.error:
            raise EtcdError(f"etcd refused a {ttl} s lease: {resp.error}")
        return int(resp.ID), started + max(int(resp.TTL), 1)

    async def revoke(self, etcd_lease_id: int) -> None:
        """Revoke an etcd lease; best effort (a missing lease is fine)."""
        if etcd_lease_id == 0:
            return

        async def op(c: EtcdClient) -> None:
            try:
                await c.leasestub.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=etcd_lease_id),
                    timeout=c.request_timeout,
                    metadata=c.metadata,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        try:
            await self.conn.call("revoke lease", op)
        except EtcdError as exc:
            log.warning(
                "could not revoke etcd lease %x: %s (it expires on its own)", etcd_lease_id, exc
            )

    async def _txn(self, what: str, request: Any) -> Any:
        async def op(c: EtcdClient) -> Any:
            return await c.kvstub.Txn(request, timeout=c.request_timeout, metadata=c.metadata)

        return await self.conn.call(what, op)

    async def create(
        self,
        subnet: IPv4Network | None,
        ipv6_subnet: IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int | None,
    ) -> Lease | None:
        """Create the key only if absent (``version == 0``), attached to a fresh etcd lease
        of ``ttl`` seconds (``ttl=None``: a reservation). None if the key already exists;
        the fresh etcd lease is then revoked."""
        key = self.lease_key(subnet, ipv6_subnet)
        value = encode_attrs(attrs)
        lease_id, expiration = await self.grant_with_expiry(ttl) if ttl is not None else (0, None)
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
                )
            ],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease_id))
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        try:
            resp = await self._txn("create lease", request)
        except BaseException:
            await _shielded(self.revoke(lease_id))
            raise
        if resp.succeeded:
            revision = resp.header.revision
        else:
            kvs = resp.responses[0].response_range.kvs
            # A retried request after a lost reply finds our own put: that is success.
            if lease_id and kvs and kvs[0].lease == lease_id and kvs[0].value == value:
                revision = kvs[0].mod_revision
            else:
                await self.revoke(lease_id)
                return None
        return Lease(
            subnet=subnet,
            ipv6_subnet=ipv6_subnet,
            attrs=attrs,
            expiration=expiration,
            etcd_lease_id=lease_id,
            mod_revision=revision,
        )

    async def update(self, lease: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        """Rewrite ``lease`` with ``attrs`` only if the key still holds it.

        Compare (in one transaction with the put): the key exists and is still attached to
        ``lease.etcd_lease_id`` (an etcd lease only we hold), or for a lease-less key
        (reservation) its ``mod_revision`` is unchanged. With ``ttl`` the key gets a fresh
        etcd lease and the old one is revoked; ``ttl=None`` keeps the key lease-less (a
        reservation stays a reservation). None if the key is gone or no longer ours.
        """
        key = self.lease_key(lease.subnet, lease.ipv6_subnet)
        value = encode_attrs(attrs)
        new_id, expiration = await self.grant_with_expiry(ttl) if ttl is not None else (0, None)
        if lease.etcd_lease_id:
            compare = rpc.Compare(
                key=key, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL,
                lease=lease.etcd_lease_id,
            )  # fmt: skip
        else:
            compare = rpc.Compare(
                key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                mod_revision=lease.mod_revision,
            )  # fmt: skip
        exists = rpc.Compare(
            key=key, target=rpc.Compare.VERSION, result=rpc.Compare.GREATER, version=0
        )
        request = rpc.TxnRequest(
            compare=[exists, compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=new_id))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        try:
            resp = await self._txn("update lease", request)
        except BaseException:
            await _shielded(self.revoke(new_id))
            raise
        if resp.succeeded:
            revision = resp.header.revision
        else:
            kvs = resp.responses[0].response_range.kvs
            if new_id and kvs and kvs[0].lease == new_id and kvs[0].value == value:
                revision = kvs[0].mod_revision  # our own retried write
            else:
                await self.revoke(new_id)
                return None
        if lease.etcd_lease_id and lease.etcd_lease_id != new_id:
            await self.revoke(lease.etcd_lease_id)
        return Lease(
            subnet=lease.subnet,
            ipv6_subnet=lease.ipv6_subnet,
            attrs=attrs,
            expiration=expiration,
            etcd_lease_id=new_id,
            mod_revision=revision,
        )

    async def delete(self, lease: Lease, *, only_if_unchanged: bool = True) -> bool:
        """Delete the lease key (if unchanged since read, by mod_revision). True if deleted."""
        key = self.lease_key(lease.subnet, lease.ipv6_subnet)
        compare = (
            [
                rpc.Compare(
                    key=key,
                    target=rpc.Compare.MOD,
                    result=rpc.Compare.EQUAL,
                    mod_revision=lease.mod_revision,
                )
            ]
            if only_if_unchanged
            else []
        )
        request = rpc.TxnRequest(
            compare=compare,
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
        )
        resp = await self._txn("delete lease", request)
        deleted = bool(resp.succeeded and resp.responses[0].response_delete_range.deleted)
        if deleted and lease.etcd_lease_id:
            await self.revoke(lease.etcd_lease_id)
        return deleted

    # --- watch -------------------------------------------------------------------------

    async def watch(
        self, start_revision: int, key: bytes | None = None
    ) -> AsyncGenerator[WatchBatch, None]:
        """One etcd watch stream over ``subnets/`` (or one ``key``) from ``start_revision``.

        Yields one :class:`WatchBatch` per watch response (progress notifications included,
        with no events). Raises :class:`WatchCompacted` when the start revision is gone,
        :class:`WatchStreamError` when etcd cancels or ends the stream, and connection errors
        as they come (the caller reconnects and resumes at the last revision + 1).
        """
        client, generation = await self.conn.client()
        create = rpc.WatchCreateRequest(
            key=key if key is not None else self.subnets_prefix,
            range_end=b"" if key is not None else _prefix_end(self.subnets_prefix),
            start_revision=start_revision,
            progress_notify=True,
        )
        metadata = (*(client.metadata or ()), ("hasleader", "true"))
        call = client.watchstub.Watch(metadata=metadata)
        sending: asyncio.Future[Any] | None = None
        try:
            try:
                # grpc.aio leaves write() pending forever if the channel is closed at that
                # moment (failover or close by another task), while read() fails: send in
                # the background and let read() report the outcome.
                sending = asyncio.ensure_future(call.write(rpc.WatchRequest(create_request=create)))
                sending.add_done_callback(_consume_result)
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise WatchStreamError("etcd closed the watch stream")
                    if resp.compact_revision:
                        raise WatchCompacted(resp.compact_revision)
                    if resp.canceled:
                        if client.uses_auth:  # e.g. "permission denied": an expired token
                            await client.authenticate()
                        raise WatchStreamError(
                            f"etcd cancelled the watch: {resp.cancel_reason or 'no reason given'}"
                        )
                    if resp.created and not resp.events:
                        continue
                    events = [self._key_event(ev) for ev in resp.events]
                    next_revision = (
                        events[-1].mod_revision + 1 if events else resp.header.revision + 1
                    )
                    yield WatchBatch(events=events, next_revision=next_revision)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and client.uses_auth:
                    await client.authenticate()
                    raise WatchStreamError(f"watch token expired: {exc.details()}") from None
                await self.conn.reset(generation, exc)
                raise
            except (grpc.aio.UsageError, grpc.aio.AbortError) as exc:
                await self.conn.reset(generation, exc)
                raise WatchStreamError(f"watch channel closed: {exc}") from None
            except asyncio.CancelledError:
                if not channel_closed_under_us():
                    raise
                raise WatchStreamError("watch channel closed under the stream") from None
        finally:
            call.cancel()
            if sending is not None and not sending.done():
                sending.cancel()

    def _key_event(self, ev: Any) -> KeyEvent:
        kv = ev.kv
        deleted = ev.type == rpc.Event.DELETE
        name = bytes(kv.key[len(self.subnets_prefix) :]).decode(errors="replace")
        if deleted:
            self._decoded.pop(bytes(kv.key), None)
        lease = None if deleted else self.decode_kv(kv)
        return KeyEvent(key=name, deleted=deleted, lease=lease, mod_revision=kv.mod_revision)


def _consume_result(fut: asyncio.Future[Any]) -> None:
    """Retrieve a background future's outcome so asyncio never warns about it."""
    if not fut.cancelled():
        fut.exception()


async def _shielded(coro: Any) -> None:
    """Run cleanup even while being cancelled (e.g. revoke a lease nobody will use)."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # cleanup must not mask the original error
        log.debug("cleanup failed: %s", exc)
