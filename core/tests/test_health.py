"""The health server over real loopback HTTP, and /readyz against a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aetcd
import pytest

from flannel.health import HealthServer, Readiness, etcd_probe_loop
from flannel.metrics import Metrics
from flannel.testing.etcd import EtcdServer

pytestmark = pytest.mark.timeout(60)

Served = tuple[HealthServer, Readiness, Metrics]


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthServer, Readiness, Metrics]]:
    metrics = Metrics()
    readiness = Readiness(metrics=metrics)
    server = HealthServer("127.0.0.1", 0, readiness, metrics)
    await server.start()
    task = asyncio.create_task(server.serve())
    try:
        yield server, readiness, metrics
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_healthz_answers_from_the_loop(
    served: tuple[HealthServer, Readiness, Metrics],
) -> None:
    server, _, _ = served
    assert server.port != 0
    status, headers, body = await get(server.port, "/healthz")
    assert (status, body) == (200, "flanneld is running\n")
    assert headers["Content-Length"] == str(len(body))
    status, _, body = await get(server.port, "/healthz", "HEAD")
    assert (status, body) == (200, "")
    assert (await get(server.port, "/healthz", "POST"))[0] == 405
    status, _, body = await get(server.port, "/nope")
    assert status == 404 and "/readyz" in body


async def test_readyz_flips_with_the_facts(served: Served) -> None:
    server, readiness, metrics = served
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    assert body == (
        "flanneld is not ready: no subnet lease held; subnet.env not written; "
        "backend not running; etcd not reached yet\n"
    )
    readiness.lease_held = readiness.subnet_env_written = readiness.backend_running = True
    readiness.etcd_reached()
    status, _, body = await get(server.port, "/readyz")
    assert (status, body) == (200, "flanneld is ready\n")
    assert metrics.gauge("ready").get() == 1
    readiness.etcd_failed(ConnectionError("connection refused"))
    status, _, body = await get(server.port, "/readyz")
    assert (status, body) == (503, "flanneld is not ready: etcd unreachable: connection refused\n")
    assert metrics.gauge("ready").get() == 0


def test_etcd_contact_goes_stale() -> None:
    now = [100.0]
    readiness = Readiness(etcd_max_age=30, clock=lambda: now[0], lease_held=True,
                          subnet_env_written=True, backend_running=True)  # fmt: skip
    readiness.etcd_reached()
    assert readiness() == (True, "ready")
    now[0] += 31
    assert readiness() == (False, "etcd not reached for 31 s (limit 30 s)")
    readiness.masq_in_place = False
    assert "masquerade rules not in place" in readiness()[1]


async def test_a_broken_readiness_callable_reads_not_ready() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("facts unavailable")

    server = HealthServer("127.0.0.1", 0, broken)
    status, _, body = server.respond("GET", "/readyz")
    assert status == 503 and "facts unavailable" in body


async def test_metrics_counters_move(served: Served) -> None:
    server, _, metrics = served
    events = metrics.counter("events_handled_total", "Peer events handled")
    events.inc(type="added")
    status, headers, body = await get(server.port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'flannel_events_handled_total{type="added"} 1' in body
    assert "# TYPE flannel_ready gauge" in body
    events.inc(2, type="added")
    body = (await get(server.port, "/metrics"))[2]
    assert 'flannel_events_handled_total{type="added"} 3' in body


async def test_port_in_use_is_a_clear_error(
    served: tuple[HealthServer, Readiness, Metrics],
) -> None:
    server, readiness, _ = served
    other = HealthServer("127.0.0.1", server.port, readiness)
    with pytest.raises(OSError, match=f"--healthz-port {server.port}"):
        await other.start()


async def _until(cond: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_readyz_follows_a_real_etcd(etcd_server: EtcdServer) -> None:
    metrics = Metrics()
    readiness = Readiness(metrics=metrics, lease_held=True, subnet_env_written=True,
                          backend_running=True)  # fmt: skip
    server = HealthServer("127.0.0.1", 0, readiness, metrics)
    await server.start()
    client = aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=2)

    async def probe() -> object:
        return await client.get(b"/coreos.com/network/config")

    loop = asyncio.create_task(etcd_probe_loop(probe, readiness, interval=0.2, probe_timeout=2))
    try:
        await _until(lambda: readiness()[0])
        assert (await get(server.port, "/readyz"))[0] == 200
        etcd_server.stop()
        await _until(lambda: not readiness()[0])
        status, _, body = await get(server.port, "/readyz")
        assert status == 503 and "etcd unreachable" in body
        assert metrics.counter("etcd_probe_failures_total").get() >= 1
        etcd_server.start()
        await _until(lambda: readiness()[0])
        assert (await get(server.port, "/readyz"))[2] == "flanneld is ready\n"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await client.close()
        await server.close()
