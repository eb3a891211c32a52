"""The aws-vpc ``Backend`` options, decoded and validated before anything talks to AWS.

Keys match case-insensitively (flanneld reads its config with Go's encoding/json) and unknown
keys are ignored with a warning. ``RouteTableID`` is flanneld's option; the others are ours.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flannel.backend import BackendConfigError

__all__ = ["DEFAULT_METADATA_URL", "AwsVpcOptions", "parse_options"]

log = logging.getLogger(__name__)

DEFAULT_METADATA_URL = "http://169.254.169.254"
METADATA_ENV = "FLANNEL_AWS_METADATA_URL"
DEFAULT_CHECK_INTERVAL = 300.0

_TABLE_ID = re.compile(r"rtb-[0-9a-f]{8,17}")
_KNOWN = {
    "type",
    "routetableid",
    "metadataendpoint",
    "ec2endpoint",
    "deleterouteonshutdown",
    "checkinterval",
}


@dataclass(frozen=True)
class AwsVpcOptions:
    route_table_ids: tuple[str, ...] = ()
    """Tables to program; empty means the instance subnet's table, else the VPC main table."""
    metadata_url: str = DEFAULT_METADATA_URL
    ec2_endpoint: str | None = None
    """None lets botocore decide (``AWS_ENDPOINT_URL_EC2``, then the regional endpoint)."""
    delete_route_on_shutdown: bool = False
    check_interval: float = DEFAULT_CHECK_INTERVAL
    """Seconds between checks that our route is still right; 0 disables them."""


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
        raise BackendConfigError(
            f"aws-vpc: Backend.{key} must be an http(s) URL such as http://127.0.0.1:8080, "
            f"got {value!r}"
        )
    return value.rstrip("/")


def _table_ids(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BackendConfigError(
            "aws-vpc: Backend.RouteTableID must be a route table ID or a non-empty list of "
            f'them (e.g. "rtb-0123456789abcdef0"), got {value!r}'
        )
    ids: list[str] = []
    for item in items:
        if not isinstance(item, str) or not _TABLE_ID.fullmatch(item):
            raise BackendConfigError(
                f"aws-vpc: Backend.RouteTableID has {item!r}, which is not a route table ID "
                '(expected "rtb-" and 8 or 17 hex digits)'
            )
        if item not in ids:
            ids.append(item)
    return tuple(ids)


def parse_options(
    backend: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> AwsVpcOptions:
    """Decode the ``Backend`` object; raises BackendConfigError naming the key and value."""
    env = os.environ if env is None else env
    fields = {str(k).lower(): (str(k), v) for k, v in backend.items()}
    for lower, (key, _) in fields.items():
        if lower not in _KNOWN:
            log.warning("aws-vpc: ignoring unknown Backend option %s", key)

    def get(name: str) -> tuple[str, Any] | None:
        return fields.get(name.lower())

    opts: dict[str, Any] = {}
    if (item := get("RouteTableID")) is not None and item[1] not in (None, "", []):
        opts["route_table_ids"] = _table_ids(item[1])
    if (item := get("MetadataEndpoint")) is not None and item[1]:
        opts["metadata_url"] = _url(item[0], item[1])
    elif env.get(METADATA_ENV):
        opts["metadata_url"] = _url(METADATA_ENV, env[METADATA_ENV])
    if (item := get("EC2Endpoint")) is not None and item[1]:
        opts["ec2_endpoint"] = _url(item[0], item[1])
    if (item := get("DeleteRouteOnShutdown")) is not None:
        if not isinstance(item[1], bool):
            raise BackendConfigError(
                f"aws-vpc: Backend.{item[0]} must be true or false, got {item[1]!r}"
            )
        opts["delete_route_on_shutdown"] = item[1]
    if (item := get("CheckInterval")) is not None:
        value = item[1]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise BackendConfigError(
                f"aws-vpc: Backend.{item[0]} must be a number of seconds >= 0 (0 disables "
                f"the periodic route check), got {value!r}"
            )
        opts["check_interval"] = float(value)
    return AwsVpcOptions(**opts)
