"""How flannel reaches etcd: client settings, TLS, auth and endpoint failover.

aetcd (the asyncio gRPC client we use) only opens plaintext channels to one host, so
:class:`EtcdClient` overrides its ``connect()`` to build TLS credentials and authenticate, and
:class:`EtcdConnection` walks the ``--etcd-endpoints`` list when an endpoint stops answering.

TLS follows the etcd v3 Go client per endpoint: ``http://`` is always plaintext, ``https://``
always TLS (our CA, else the system roots), a bare ``host:port`` uses TLS when any TLS file is
configured. Unlike flanneld v0.20, a CA file alone is honoured (no client cert needed).
Nothing here ever logs the password.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc

from flannel.manager import SubnetManagerError

__all__ = [
    "DEFAULT_ENDPOINTS",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdClientConfig",
    "EtcdClosed",
    "EtcdConfigError",
    "EtcdConnection",
    "EtcdError",
    "EtcdUnavailable",
    "channel_closed_under_us",
    "describe_error",
    "is_connection_error",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINTS = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
"""flanneld's ``--etcd-endpoints`` default."""

_CONNECTION_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# Keepalive detects a silently dead etcd (no RST) under long watches; etcd's default
# --grpc-keepalive-min-time is 5 s, so pinging every 10 s is allowed. Pings only while a
# call is open: etcd does not permit pings without streams and answers them with GOAWAY.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2_000,
}


class EtcdError(SubnetManagerError):
    """An etcd request failed for a reason other than reachability."""


class EtcdConfigError(EtcdError, ValueError):
    """Bad etcd client settings (endpoint syntax, missing TLS pair, unreadable file)."""


class EtcdUnavailable(EtcdError):
    """No configured etcd endpoint answered."""


class EtcdAuthError(EtcdError):
    """etcd refused our username/password or token."""


class EtcdClosed(EtcdError):
    """The connection was closed on purpose (the subnet manager was closed)."""


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that mean "etcd unreachable, try again / another endpoint"."""
    if isinstance(exc, EtcdUnavailable):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _CONNECTION_CODES
    if isinstance(exc, aetcd.exceptions.ClientError) and exc.__cause__ is not None:
        return is_connection_error(exc.__cause__)
    return isinstance(exc, (grpc.aio.UsageError, grpc.aio.AbortError, ConnectionError))


_HOST_RE = re.compile(r"[A-Za-z0-9._:%-]+")


@dataclass(frozen=True)
class Endpoint:
    """One parsed ``--etcd-endpoints`` element."""

    url: str
    host: str
    port: int
    scheme: str  # "http", "https" or "" (bare host:port)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        raw = text.strip()
        if not raw:
            raise EtcdConfigError("empty etcd endpoint in --etcd-endpoints: remove the stray comma")
        parts = urlsplit(raw if "://" in raw else f"//{raw}")
        scheme = parts.scheme.lower()
        if scheme not in ("", "http", "https"):
            raise EtcdConfigError(
                f"etcd endpoint {raw!r} has scheme {scheme!r}: use http://HOST:PORT or "
                "https://HOST:PORT"
            )
        try:
            port = parts.port or 2379
        except ValueError:
            raise EtcdConfigError(
                f"etcd endpoint {raw!r} has a bad port: use HOST:PORT, e.g. 127.0.0.1:2379"
            ) from None
        if (
            not parts.hostname
            or parts.path not in ("", "/")
            or not _HOST_RE.fullmatch(parts.hostname)
        ):
            raise EtcdConfigError(
                f"etcd endpoint {raw!r} is not HOST:PORT or a URL: use e.g. http://127.0.0.1:2379"
            )
        return cls(url=raw, host=parts.hostname, port=port, scheme=scheme)

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class EtcdClientConfig:
    """How to reach etcd (flanneld's ``--etcd-*`` flags). ``repr`` hides the password."""

    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    dial_timeout: float = 5.0
    """Seconds to wait for one endpoint to answer before trying the next."""
    request_timeout: float = 10.0
    """Deadline of every unary request."""

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            object.__setattr__(self, "endpoints", tuple(self.endpoints.split(",")))
        if not self.endpoints:
            raise EtcdConfigError("no etcd endpoint given: pass --etcd-endpoints=http://HOST:2379")
        for ep in self.endpoints:
            Endpoint.parse(ep)
        if bool(self.cert_file) != bool(self.key_file):
            given, missing = (
                ("--etcd-certfile", "--etcd-keyfile")
                if self.cert_file
                else ("--etcd-keyfile", "--etcd-certfile")
            )
            raise EtcdConfigError(
                f"{given} given without {missing}: a client certificate needs both files"
            )
        if bool(self.username) != bool(self.password):
            raise EtcdConfigError(
                "etcd authentication needs both --etcd-username and --etcd-password"
                + (f" (user {self.username!r} has no password)" if self.username else "")
            )

    @classmethod
    def from_flags(
        cls,
        endpoints: str | Sequence[str] = ",".join(DEFAULT_ENDPOINTS),
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        username: str = "",
        password: str = "",
    ) -> EtcdClientConfig:
        """Build from flag values; ``endpoints`` may be flanneld's comma list."""
        items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
        return cls(
            endpoints=tuple(e.strip() for e in items),
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
        )

    @property
    def parsed_endpoints(self) -> list[Endpoint]:
        return [Endpoint.parse(ep) for ep in self.endpoints]

    @property
    def tls_configured(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def describe(self) -> str:
        """A log-safe summary (never the password)."""
        parts = [",".join(self.endpoints)]
        if self.tls_configured:
            parts.append(f"ca={self.ca_file or '-'} cert={self.cert_file or '-'}")
        if self.username:
            parts.append(f"user={self.username}")
        return " ".join(parts)


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EtcdConfigError(
            f"cannot read {flag} {path}: {exc.strerror or exc}; check the path and permissions"
        ) from None


def channel_credentials(
    config: EtcdClientConfig, endpoint: Endpoint
) -> grpc.ChannelCredentials | None:
    """TLS credentials for ``endpoint``, or None for plaintext (see the module docstring)."""
    use_tls = endpoint.scheme == "https" or (endpoint.scheme == "" and config.tls_configured)
    if not use_tls:
        return None
    ca = _read(config.ca_file, "--etcd-cafile") if config.ca_file else None
    cert = _read(config.cert_file, "--etcd-certfile") if config.cert_file else None
    key = _read(config.key_file, "--etcd-keyfile") if config.key_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with TLS credentials (aetcd issue #37) and an explicit channel probe."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: grpc.ChannelCredentials | None,
        *,
        username: str,
        password: str,
        timeout: float,
    ) -> None:
        super().__init__(
            host=endpoint.host,
            port=endpoint.port,
            username=username or None,
            password=password or None,
            timeout=timeout,
            options=dict(_CHANNEL_OPTIONS),
        )
        self.endpoint = endpoint
        self._credentials = credentials
        self.watchstub: Any = None
        self.request_timeout = timeout
        """Deadline of unary requests (the dial timeout until connected)."""

    @property
    def uses_auth(self) -> bool:
        return bool(self._username)

    async def connect(self) -> None:
        """Open the channel, authenticate if configured, and make the stubs."""
        if self._connected.is_set():
            return
        options = list(self._options.items())
        target = self.endpoint.target
        if self._credentials is not None:
            self.channel = rpc.secure_channel(target, self._credentials, options=options)
        else:
            self.channel = rpc.insecure_channel(target, options=options)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self.watchstub = rpc.WatchStub(self.channel)
        await self.authenticate()
        self._connected.set()

    async def authenticate(self) -> None:
        """Get a fresh auth token, or probe the endpoint with Status when auth is off."""
        if self._username:
            self.auth_stub = rpc.AuthStub(self.channel)
            resp = await self.auth_stub.Authenticate(
                rpc.AuthenticateRequest(name=self._username, password=self._password),
                timeout=self._timeout,
            )
            self.metadata = (("token", resp.token),)
        else:
            await self.maintenancestub.Status(rpc.StatusRequest(), timeout=self._timeout)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        self._init_channel_attrs()
        self.watchstub = None
        self._connected.clear()


class EtcdConnection:
    """A connection to the first answering endpoint, with failover and re-authentication.

    Every request goes through :meth:`call`. A connection-level failure closes the channel,
    moves on to the next endpoint and retries the request once per endpoint; only when no
    endpoint answers does :class:`EtcdUnavailable` reach the caller. Requests that may have
    been applied before the failure must therefore be safe to repeat (ours compare in a
    transaction and check the outcome).
    """

    def __init__(self, config: EtcdClientConfig) -> None:
        self.config = config
        self._endpoints = config.parsed_endpoints
        self._index = 0
        self._client: EtcdClient | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def endpoints_text(self) -> str:
        return ",".join(self.config.endpoints)

    async def client(self) -> tuple[EtcdClient, int]:
        """The connected client and its generation (pass it to :meth:`reset`)."""
        if self._client is not None:
            return self._client, self._generation
        async with self._lock:
            if self._client is None:
                await self._connect_any()
            assert self._client is not None
            return self._client, self._generation

    async def _connect_any(self) -> None:
        if self._closed:
            raise EtcdClosed("etcd connection is closed (the subnet manager was closed)")
        errors: list[str] = []
        for step in range(len(self._endpoints)):
            index = (self._index + step) % len(self._endpoints)
            endpoint = self._endpoints[index]
            client = EtcdClient(
                endpoint,
                channel_credentials(self.config, endpoint),
                username=self.config.username,
                password=self.config.password,
                timeout=self.config.dial_timeout,
            )
            try:
                await client.connect()
            except grpc.aio.AioRpcError as exc:
                await client.close()
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and self.config.username:
                    raise EtcdAuthError(
                        f"etcd at {endpoint.url} rejected user {self.config.username!r}: "
                        f"{exc.details()}; check --etcd-username/--etcd-password"
                    ) from None
                errors.append(f"{endpoint.url}: {describe_error(exc)}")
                continue
            except BaseException:
                await client.close()
                raise
            client.request_timeout = client._timeout = self.config.request_timeout
            self._client, self._index = client, index
            self._generation += 1
            log.debug("connected to etcd at %s", endpoint.url)
            return
        raise EtcdUnavailable(
            f"cannot reach etcd at {self.endpoints_text} ({'; '.join(errors)}): check that etcd "
            "is running and that --etcd-endpoints and the TLS/auth flags are right"
        )

    async def reset(self, generation: int, reason: BaseException | str = "") -> None:
        """Drop the client of ``generation`` (if still current) so the next call reconnects,
        starting with the next endpoint."""
        async with self._lock:
            if self._client is None or generation != self._generation:
                return
            client, self._client = self._client, None
            self._index = (self._index + 1) % len(self._endpoints)
            log.info(
                "etcd at %s failed (%s); reconnecting", client.endpoint.url, describe_error(reason)
            )
            await client.close()

    async def call(self, what: str, fn: Callable[[EtcdClient], Awaitable[T]]) -> T:
        """Run ``fn(client)``, failing over between endpoints; ``what`` names it in errors."""
        attempts = len(self._endpoints) + 1
        reauthed = False
        last: BaseException | None = None
        for _ in range(attempts):
            client, generation = await self.client()
            try:
                try:
                    return await fn(client)
                except aetcd.exceptions.ClientError as wrapped:
                    # aetcd's own methods (client.get, ...) wrap the gRPC error; unwrap it.
                    if isinstance(wrapped.__cause__, grpc.aio.AioRpcError):
                        raise wrapped.__cause__ from None
                    raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and not reauthed:
                    reauthed = True  # simple tokens expire after --auth-token-ttl idle
                    try:
                        await client.authenticate()
                    except grpc.aio.AioRpcError as auth_exc:
                        raise EtcdAuthError(
                            f"etcd {what} at {client.endpoint.url}: re-authentication of user "
                            f"{self.config.username!r} failed: {auth_exc.details()}"
                        ) from None
                    continue
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    raise EtcdAuthError(
                        f"etcd {what} at {client.endpoint.url} denied: {exc.details()}; check "
                        "--etcd-username/--etcd-password and the user's role"
                    ) from None
                if "user name is empty" in (exc.details() or ""):
                    raise EtcdAuthError(
                        f"etcd at {client.endpoint.url} requires authentication: pass "
                        "--etcd-username and --etcd-password"
                    ) from None
                if not is_connection_error(exc):
                    raise EtcdError(
                        f"etcd {what} at {client.endpoint.url} failed: {describe_error(exc)}"
                    ) from None
                last = exc
                await self.reset(generation, exc)
            except (grpc.aio.UsageError, grpc.aio.AbortError) as exc:  # channel closed under us
                last = exc
                await self.reset(generation, exc)
            except asyncio.CancelledError:
                if not channel_closed_under_us():
                    raise
                last = EtcdUnavailable("the channel was closed during the request")
                if self._closed:
                    raise EtcdClosed(f"etcd {what}: the connection was closed") from None
        raise EtcdUnavailable(
            f"etcd {what} failed: no endpoint of {self.endpoints_text} answered "
            f"({describe_error(last)}); check that etcd is running and reachable"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def reopen(self) -> None:
        """Allow connecting again after :meth:`close`."""
        self._closed = False

    async def close(self) -> None:
        """Close the channel; pending and later requests fail with EtcdClosed."""
        async with self._lock:
            self._closed = True
            client, self._client = self._client, None
            if client is not None:
                await client.close()


def channel_closed_under_us() -> bool:
    """True when a CancelledError came from grpc closing the channel (another task failed
    over or closed the manager), not from our own task being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def describe_error(exc: BaseException | str | None) -> str:
    """One line for logs and errors (gRPC errors are multi-line by default)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, str):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").splitlines()
        return f"{exc.code().name}: {details[0] if details else ''}".strip()
    return f"{type(exc).__name__}: {exc}"
