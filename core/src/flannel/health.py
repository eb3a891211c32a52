"""The operator's HTTP endpoint (``--healthz-ip``/``--healthz-port``): stdlib asyncio only.

- ``/healthz``: 200 ``flanneld is running`` whenever the daemon's event loop answers. The
  server runs on that loop, so a wedged loop means no answer (what a liveness probe wants).
- ``/readyz``: 200 only when the readiness callable says so (lease held, subnet.env written,
  backend running, etcd reached recently); else 503 with the failing reasons, one line.
- ``/metrics``: Prometheus text (format 0.0.4) from :meth:`flannel.metrics.Metrics.render`.

Upstream's /healthz always answers 200 and it has no metrics; these tell the truth.

Metric names (``flannel_`` prefix added by :class:`~flannel.metrics.Metrics`; who records):

- ``ready`` gauge, 1/0: the last /readyz verdict (this module)
- ``etcd_last_contact_age_seconds`` gauge, ``etcd_probe_failures_total`` counter: the etcd
  probe behind /readyz (this module)
- ``lease_expiration_timestamp_seconds`` gauge, ``lease_acquisitions_total``,
  ``lease_renewals_total{result="ok|error"}``, ``lease_lost_total``,
  ``network_init_failures_total``, ``peer_event_batches_total`` (network lifecycle)
- ``events_handled_total``: peer events handled (backends)
- ``vxlan_peers``, ``hostgw_routes``, ``udp_peers`` gauges: peers programmed (backends)
- ``vxlan_errors_total``, ``hostgw_route_errors_total``: reconcile/programming errors
- ``udp_packets_total``, ``udp_bytes_total``, ``udp_drops_total``,
  ``udp_icmp_unreachable_total``: the udp data path
- ``masq_repairs_total``, ``masq_errors_total``, ``masq_rules_in_place``
  (:mod:`flannel.ipmasq`)
- ``cloud_api_calls_total``: cloud backends
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from flannel.metrics import Metrics

__all__ = ["HealthServer", "Readiness", "etcd_probe_loop"]

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], tuple[bool, str]]


@dataclass
class Readiness:
    """The facts /readyz is built from; the daemon sets them as they become true.

    Calling the object returns ``(ready, reason)``: reason is "ready" or the failing facts
    joined by ``; ``. etcd counts as reached when the last successful call is younger than
    ``etcd_max_age`` seconds and no failure was reported after it.
    """

    etcd_max_age: float = 30.0
    clock: Callable[[], float] = time.monotonic
    lease_held: bool = False
    subnet_env_written: bool = False
    backend_running: bool = False
    masq_in_place: bool | None = None
    """None when --ip-masq is off; otherwise whether the rules are installed."""
    last_etcd_ok: float | None = None
    etcd_error: str = ""
    etcd_error_at: float = 0.0
    metrics: Metrics | None = field(default=None, repr=False)

    def etcd_reached(self, at: float | None = None) -> None:
        """etcd answered (now, or at ``at`` on :attr:`clock`); clears an older failure."""
        at = self.clock() if at is None else at
        if self.last_etcd_ok is None or at > self.last_etcd_ok:
            self.last_etcd_ok = at
        if at >= self.etcd_error_at:
            self.etcd_error = ""

    def etcd_failed(self, error: BaseException | str) -> None:
        self.etcd_error = str(error) or type(error).__name__
        self.etcd_error_at = self.clock()

    def __call__(self) -> tuple[bool, str]:
        reasons: list[str] = []
        if not self.lease_held:
            reasons.append("no subnet lease held")
        if not self.subnet_env_written:
            reasons.append("subnet.env not written")
        if not self.backend_running:
            reasons.append("backend not running")
        if self.masq_in_place is False:
            reasons.append("masquerade rules not in place")
        age = None if self.last_etcd_ok is None else self.clock() - self.last_etcd_ok
        if self.metrics is not None and age is not None:
            self.metrics.gauge(
                "etcd_last_contact_age_seconds", "Seconds since etcd last answered"
            ).set(round(age, 3))
        if self.etcd_error:
            reasons.append(f"etcd unreachable: {self.etcd_error}")
        elif age is None:
            reasons.append("etcd not reached yet")
        elif age > self.etcd_max_age:
            reasons.append(f"etcd not reached for {age:.0f} s (limit {self.etcd_max_age:.0f} s)")
        return (not reasons, "; ".join(reasons) or "ready")


async def etcd_probe_loop(
    probe: Callable[[], Awaitable[object]],
    readiness: Readiness,
    interval: float = 5.0,
    probe_timeout: float = 5.0,
) -> None:
    """Call ``probe`` (e.g. a cheap etcd Get) every ``interval`` s and record the outcome.

    For daemons whose etcd traffic is only a long-lived watch, which can be silent for
    hours: this keeps "etcd reached recently" honest. Runs until cancelled.
    """
    while True:
        try:
            await asyncio.wait_for(probe(), probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means "not reached"; the reason is reported
            readiness.etcd_failed(exc if str(exc) else type(exc).__name__)
            if readiness.metrics is not None:
                readiness.metrics.counter(
                    "etcd_probe_failures_total", "Failed etcd probes behind /readyz"
                ).inc()
        else:
            readiness.etcd_reached()
        await asyncio.sleep(interval)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip
_MAX_HEAD = 8192


class HealthServer:
    """Serves /healthz, /readyz and /metrics; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: ReadinessCheck,
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self.metrics = metrics or Metrics()
        self._server: asyncio.Server | None = None
        self._ready = self.metrics.gauge("ready", "1 when /readyz answers 200, else 0")

    async def start(self) -> None:
        """Bind and start serving on the running loop (returns at once)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen on --healthz-ip {self.host} --healthz-port {self.port}: "
                f"{exc.strerror}; pick a free port or another address",
            ) from exc
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("health server listening", extra={"address": f"{self.host}:{self.port}"})

    async def serve(self) -> None:
        """Start (if needed) and serve until cancelled; then close the listener."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 3)

    def respond(self, method: str, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for one request; no I/O, so tests can call it."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", f"method {method} not allowed: use GET\n"
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", "flanneld is running\n"
        if path == "/readyz":
            ok, reason = self._check()
            if ok:
                return 200, "text/plain; charset=utf-8", "flanneld is ready\n"
            return 503, "text/plain; charset=utf-8", f"flanneld is not ready: {reason}\n"
        if path == "/metrics":
            self._check()
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()
        return (
            404,
            "text/plain; charset=utf-8",
            f"{path} not found: try /healthz, /readyz, /metrics\n",
        )

    def _check(self) -> tuple[bool, str]:
        try:
            ok, reason = self.readiness()
        except Exception as exc:  # a broken fact source must read as "not ready", not crash
            log.exception("readiness check failed")
            ok, reason = False, f"readiness check failed: {exc}"
        self._ready.set(1 if ok else 0)
        return ok, reason

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_HEAD:
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                status, ctype, body = 400, "text/plain; charset=utf-8", "bad request line\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.respond(method, parts[1])
            data = body.encode()
            head_out = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head_out if method == "HEAD" else head_out + data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
