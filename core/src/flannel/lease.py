"""Leases and their wire format in etcd, byte-compatible with Go flanneld v0.20+.

A lease is one host's claim on a subnet. In etcd it is the key
``<prefix>/subnets/10.244.5.0-24`` (dual-stack: ``10.244.5.0-24&fd00:0:0:5::-64``) whose
value is the JSON of :class:`LeaseAttrs`, with flanneld's field order and
``"PublicIPv6":null`` always present, so Go and Python hosts read each other's leases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

__all__ = [
    "Lease",
    "LeaseAttrs",
    "LeaseFormatError",
    "decode_attrs",
    "encode_attrs",
    "parse_subnet_key",
    "subnet_key",
]

# The IPv6-only lease key carries this placeholder IPv4 part, as flanneld writes it.
NO_IPV4 = IPv4Network("0.0.0.0/0")

_KEY_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([a-f\d:]+)-(\d{1,3}))?")


class LeaseFormatError(ValueError):
    """A subnet key or lease value in etcd that flannel cannot read."""


@dataclass(frozen=True)
class LeaseAttrs:
    """What a host publishes with its subnet: where to reach it and backend-specific data.

    ``backend_data``/``backend_v6_data`` hold the decoded JSON value (usually a dict); they are
    re-encoded compactly, in the order given, when written.
    """

    public_ip: IPv4Address = IPv4Address("0.0.0.0")
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""
    backend_data: Any = None
    backend_v6_data: Any = None


@dataclass(frozen=True)
class Lease:
    """A subnet held by one host.

    ``expiration`` is a ``time.time()`` value, or ``None`` for a reservation (a key with no
    etcd lease, which never expires). ``etcd_lease_id`` and ``mod_revision`` let the subnet
    manager renew with compare-and-swap; they are 0 for leases not read from etcd.
    """

    subnet: IPv4Network | None
    attrs: LeaseAttrs = field(default_factory=LeaseAttrs)
    ipv6_subnet: IPv6Network | None = None
    expiration: float | None = None
    etcd_lease_id: int = 0
    mod_revision: int = 0

    @property
    def key(self) -> str:
        """The last path element of this lease's etcd key, e.g. ``10.244.5.0-24``."""
        return subnet_key(self.subnet, self.ipv6_subnet)

    @property
    def is_reservation(self) -> bool:
        return self.expiration is None

    def with_attrs(self, attrs: LeaseAttrs) -> Lease:
        return replace(self, attrs=attrs)


def subnet_key(subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None = None) -> str:
    """Format the etcd key element for a (dual-stack) subnet exactly as flanneld does."""
    v4 = subnet if subnet is not None else NO_IPV4
    key = f"{v4.network_address}-{v4.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[IPv4Network | None, IPv6Network | None]:
    """Parse ``10.244.5.0-24`` or ``10.244.5.0-24&fd00::-64`` (the part after ``subnets/``).

    Raises :class:`LeaseFormatError` for anything flanneld would not have written, including
    upper-case hex, octets above 255, host bits set and trailing garbage.
    """
    match = _KEY_RE.fullmatch(key)
    if match is None:
        raise LeaseFormatError(f"not a subnet key: {key!r}")
    v4_text, v4_len, v6_text, v6_len = match.groups()
    try:
        v4 = IPv4Network(f"{v4_text}/{int(v4_len)}")
        v6 = IPv6Network(f"{v6_text}/{int(v6_len)}") if v6_text is not None else None
    except ValueError as exc:
        raise LeaseFormatError(f"not a subnet key: {key!r} ({exc})") from None
    if v6 is not None and v6_text != str(v6.network_address):
        raise LeaseFormatError(f"not a subnet key: {key!r} (IPv6 part is not canonical)")
    return (None if v4 == NO_IPV4 else v4), v6


def _json_compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_attrs(attrs: LeaseAttrs) -> bytes:
    """Encode lease attributes as flanneld does: field order fixed, ``PublicIPv6`` always
    present (``null`` when unset), the backend fields omitted when empty."""
    parts = [
        f'"PublicIP":"{attrs.public_ip}"',
        '"PublicIPv6":' + (f'"{attrs.public_ipv6}"' if attrs.public_ipv6 is not None else "null"),
    ]
    if attrs.backend_type:
        parts.append(f'"BackendType":{_json_compact(attrs.backend_type)}')
    if attrs.backend_data not in (None, "", {}):
        parts.append(f'"BackendData":{_json_compact(attrs.backend_data)}')
    if attrs.backend_v6_data not in (None, "", {}):
        parts.append(f'"BackendV6Data":{_json_compact(attrs.backend_v6_data)}')
    return ("{" + ",".join(parts) + "}").encode()


def decode_attrs(raw: bytes | str) -> LeaseAttrs:
    """Decode a lease value. Keys match case-insensitively, as Go's encoding/json does;
    unknown keys are ignored. Raises :class:`LeaseFormatError` on bad JSON or bad types."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LeaseFormatError(f"lease value is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LeaseFormatError(f"lease value is not a JSON object: {raw!r:.80}")
    fields = {str(k).lower(): v for k, v in doc.items()}

    def text(name: str) -> str | None:
        value = fields.get(name.lower())
        if value is None:
            return None
        if not isinstance(value, str):
            raise LeaseFormatError(f"lease field {name} must be a string, got {value!r:.40}")
        return value

    try:
        public_ip_text = text("PublicIP")
        public_ip = IPv4Address(public_ip_text) if public_ip_text else IPv4Address("0.0.0.0")
        public_ipv6_text = text("PublicIPv6")
        public_ipv6 = IPv6Address(public_ipv6_text) if public_ipv6_text else None
    except ValueError as exc:
        raise LeaseFormatError(f"lease has a bad public address: {exc}") from None
    return LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=text("BackendType") or "",
        backend_data=fields.get("backenddata"),
        backend_v6_data=fields.get("backendv6data"),
    )
