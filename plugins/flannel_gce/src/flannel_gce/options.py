"""The gce ``Backend`` options, decoded and validated before anything talks to Google.

flanneld's gce backend had no options; these are ours, all optional. Keys match
case-insensitively (as Go's encoding/json) and unknown keys are ignored with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend import BackendConfigError

__all__ = ["DEFAULT_COMPUTE_URL", "DEFAULT_METADATA_URL", "GceOptions", "parse_options"]

log = logging.getLogger(__name__)

DEFAULT_METADATA_URL = "http://169.254.169.254/computeMetadata/v1"
DEFAULT_COMPUTE_URL = "https://compute.googleapis.com/compute/v1"
METADATA_ENV = "FLANNEL_GCE_METADATA_URL"
COMPUTE_ENV = "FLANNEL_GCE_COMPUTE_URL"
DEFAULT_CHECK_INTERVAL = 300.0
DEFAULT_OPERATION_TIMEOUT = 300.0

_KNOWN = {
    "type",
    "metadataendpoint",
    "computeendpoint",
    "deleterouteonshutdown",
    "checkinterval",
    "operationtimeout",
}


@dataclass(frozen=True)
class GceOptions:
    metadata_url: str = DEFAULT_METADATA_URL
    compute_url: str = DEFAULT_COMPUTE_URL
    delete_route_on_shutdown: bool = False
    check_interval: float = DEFAULT_CHECK_INTERVAL
    """Seconds between checks that our route is still right; 0 disables them."""
    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT
    """Seconds to wait for one route insert or delete operation to finish."""


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
        raise BackendConfigError(
            f"gce: Backend.{key} must be an http(s) URL such as http://127.0.0.1:8080/v1, "
            f"got {value!r}"
        )
    return value.rstrip("/")


def _seconds(key: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise BackendConfigError(
            f"gce: Backend.{key} must be a number of seconds >= {minimum:g}, got {value!r}"
        )
    return float(value)


def parse_options(backend: Mapping[str, Any], env: Mapping[str, str] | None = None) -> GceOptions:
    """Decode the ``Backend`` object; raises BackendConfigError naming the key and value."""
    env = os.environ if env is None else env
    fields = {str(k).lower(): (str(k), v) for k, v in backend.items()}
    for lower, (key, _) in fields.items():
        if lower not in _KNOWN:
            log.warning("gce: ignoring unknown Backend option %s", key)

    def get(name: str) -> tuple[str, Any] | None:
        return fields.get(name.lower())

    opts: dict[str, Any] = {}
    for option, env_name, attr in (
        ("MetadataEndpoint", METADATA_ENV, "metadata_url"),
        ("ComputeEndpoint", COMPUTE_ENV, "compute_url"),
    ):
        if (item := get(option)) is not None and item[1]:
            opts[attr] = _url(item[0], item[1])
        elif env.get(env_name):
            opts[attr] = _url(env_name, env[env_name])
    if (item := get("DeleteRouteOnShutdown")) is not None:
        if not isinstance(item[1], bool):
            raise BackendConfigError(
                f"gce: Backend.{item[0]} must be true or false, got {item[1]!r}"
            )
        opts["delete_route_on_shutdown"] = item[1]
    if (item := get("CheckInterval")) is not None:
        opts["check_interval"] = _seconds(item[0], item[1], 0)
    if (item := get("OperationTimeout")) is not None:
        opts["operation_timeout"] = _seconds(item[0], item[1], 1)
    return GceOptions(**opts)
