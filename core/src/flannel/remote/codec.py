"""JSON shapes of the remote API (flanneld 0.7.1's, extended for dual-stack and CAS).

Lease: ``{"Subnet":"10.1.5.0/24","Attrs":{...},"Expiration":"<RFC3339>"}`` with the zero time
``0001-01-01T00:00:00Z`` for a reservation. Our additions, ignored by older readers:
``IPv6Subnet``, ``Asof`` (the key's etcd revision, as flanneld v0.20's Lease names it) and
``LeaseID`` (the etcd lease), which let the server renew with compare-and-swap.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from flannel.events import Event, EventType
from flannel.lease import Lease, LeaseFormatError, decode_attrs, encode_attrs

__all__ = ["ZERO_TIME", "event_to_json", "json_to_event", "json_to_lease", "lease_to_json"]

ZERO_TIME = "0001-01-01T00:00:00Z"


def _time_text(expiration: float | None) -> str:
    if expiration is None:
        return ZERO_TIME
    if expiration == float("inf"):
        expiration = 253402300799.0  # 9999-12-31: "held, remaining TTL not looked up"
    return datetime.fromtimestamp(expiration, UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise LeaseFormatError(f"lease Expiration {text!r} is not an RFC 3339 time") from None


def lease_to_json(lease: Lease) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Subnet": str(lease.subnet) if lease.subnet is not None else "0.0.0.0/0",
        "Attrs": json.loads(encode_attrs(lease.attrs)),
        "Expiration": _time_text(lease.expiration),
    }
    if lease.ipv6_subnet is not None:
        doc["IPv6Subnet"] = str(lease.ipv6_subnet)
    if lease.mod_revision:
        doc["Asof"] = lease.mod_revision
    if lease.etcd_lease_id:
        doc["LeaseID"] = lease.etcd_lease_id
    return doc


def json_to_lease(doc: Any) -> Lease:
    if not isinstance(doc, dict):
        raise LeaseFormatError("a lease must be a JSON object")
    try:
        subnet = IPv4Network(str(doc.get("Subnet", "")))
        v6_text = doc.get("IPv6Subnet")
        ipv6 = IPv6Network(v6_text) if v6_text else None
    except ValueError as exc:
        raise LeaseFormatError(f"lease has a bad subnet: {exc}") from None
    return Lease(
        subnet=None if subnet.prefixlen == 0 else subnet,
        attrs=decode_attrs(json.dumps(doc.get("Attrs") or {})),
        ipv6_subnet=ipv6,
        expiration=_parse_time(doc.get("Expiration")),
        etcd_lease_id=int(doc.get("LeaseID") or 0),
        mod_revision=int(doc.get("Asof") or 0),
    )


def event_to_json(event: Event) -> dict[str, Any]:
    return {"type": event.type.value, "lease": lease_to_json(event.lease)}


def json_to_event(doc: Any) -> Event:
    if not isinstance(doc, dict) or doc.get("type") not in ("added", "removed"):
        raise LeaseFormatError(f"not a lease event: {doc!r:.80}")
    return Event(EventType(doc["type"]), json_to_lease(doc.get("lease")))
