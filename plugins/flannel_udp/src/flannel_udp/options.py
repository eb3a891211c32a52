"""The udp backend's options in the network config's ``Backend`` object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend import BackendConfigError

__all__ = ["DEFAULT_PORT", "UdpOptions", "parse_options"]

DEFAULT_PORT = 8285


@dataclass(frozen=True)
class UdpOptions:
    port: int = DEFAULT_PORT
    """UDP port we listen on and send to (flanneld assumes every peer uses the same one)."""


def parse_options(backend: Mapping[str, Any]) -> UdpOptions:
    """Read ``Port`` (keys match case-insensitively, as Go's JSON decoder; others ignored)."""
    fields = {str(k).lower(): v for k, v in backend.items()}
    port = fields.get("port", DEFAULT_PORT)
    if port in (None, 0):
        port = DEFAULT_PORT  # Go's zero value means "use the default"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BackendConfigError(
            f"udp backend option Port={port!r} is invalid: use an integer in 1..65535 "
            f"(default {DEFAULT_PORT})"
        )
    return UdpOptions(port=port)
