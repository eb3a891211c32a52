"""The network configuration: flanneld's JSON at ``<prefix>/config``.

Parsing follows Go's encoding/json (keys match case-insensitively, unknown keys are ignored,
host bits in CIDRs are masked) and flanneld v0.20's defaults, and validates more than
upstream does (SubnetMin <= SubnetMax, alignment, ranges, IPv6 consistency).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

__all__ = ["ConfigError", "NetworkConfig", "parse_config"]


class ConfigError(ValueError):
    """The network config is invalid. The message names the key, the value and the fix."""


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config, with every default filled in."""

    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    backend_type: str = "udp"
    """Lower-cased ``Backend.Type``; ``udp`` when ``Backend`` is absent (as flanneld)."""
    backend: dict[str, Any] = field(default_factory=dict)
    """The raw ``Backend`` object, keys as written; the backend decodes its own options."""
    raw: bytes = b""


def parse_config(raw: bytes | str) -> NetworkConfig:
    """Parse and validate a network config document. Raises :class:`ConfigError`."""
    raise NotImplementedError  # TODO(core): issue 2
