"""Copy the data path's counters into the daemon's metrics registry."""

from __future__ import annotations

from collections.abc import Mapping

from flannel.metrics import Metrics

__all__ = ["publish_stats"]

_PATHS = ("tun_rx", "udp_tx", "udp_rx", "tun_tx")


def publish_stats(metrics: Metrics, stats: Mapping[str, int], peers: int) -> None:
    """Set the ``flannel_udp_*`` metrics from one ``Forwarder.stats()`` snapshot.

    The forwarder's counters are monotonic, so the metric values are set, not added.
    """
    packets = metrics.counter("udp_packets_total", "Packets through the udp data path")
    octets = metrics.counter("udp_bytes_total", "Bytes through the udp data path")
    for path in _PATHS:
        packets.set(float(stats.get(f"{path}_packets", 0)), path=path)
        octets.set(float(stats.get(f"{path}_bytes", 0)), path=path)
    drops = metrics.counter("udp_drops_total", "Packets the udp data path dropped, by reason")
    for name, value in stats.items():
        if name.startswith("drop_"):  # drop_no_route, drop_unknown_source, ...
            drops.set(float(value), reason=name.removeprefix("drop_"))
    metrics.counter(
        "udp_icmp_unreachable_total", "ICMP net-unreachable errors sent for unleased destinations"
    ).set(float(stats.get("icmp_unreachable", 0)))
    metrics.gauge("udp_peers", "Peer subnets in the udp forwarding table").set(float(peers))
