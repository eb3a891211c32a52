"""In-process counters and gauges, exported as Prometheus text by the health server.

Deliberately tiny (no prometheus_client on the daemon's import path): a metric is a name,
help text and a value per label set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Metric", "Metrics"]

LabelKey = tuple[tuple[str, str], ...]


@dataclass
class Metric:
    name: str
    help: str
    kind: str  # "counter" or "gauge"
    values: dict[LabelKey, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)


class Metrics:
    """A registry of metrics; ``counter``/``gauge`` return the existing metric of that name."""

    def __init__(self, namespace: str = "flannel") -> None:
        self.namespace = namespace
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def _metric(self, name: str, help: str, kind: str) -> Metric:
        full = f"{self.namespace}_{name}"
        with self._lock:
            metric = self._metrics.get(full)
            if metric is None:
                metric = self._metrics[full] = Metric(full, help, kind)
            return metric

    def counter(self, name: str, help: str = "") -> Metric:
        return self._metric(name, help, "counter")

    def gauge(self, name: str, help: str = "") -> Metric:
        return self._metric(name, help, "gauge")

    def __iter__(self) -> Iterator[Metric]:
        with self._lock:
            return iter(list(self._metrics.values()))

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        for metric in self:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for labels, value in sorted(metric.values.items()):
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                suffix = f"{{{label_text}}}" if label_text else ""
                lines.append(f"{metric.name}{suffix} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
