"""The network configuration: flanneld's JSON at ``<prefix>/config``.

Parsing follows Go's encoding/json (keys match case-insensitively, unknown keys are ignored,
host bits in CIDRs are masked) and flanneld v0.20's defaults, and validates more than
upstream does (SubnetMin <= SubnetMax, alignment, ranges, IPv6 consistency).

Defaults (flanneld v0.20.2): ``SubnetLen`` is 24 when the Network prefix is /22 or shorter,
else prefix+2; ``SubnetMin`` is the second subnet (the first is skipped) and ``SubnetMax``
the last. IPv6 likewise with 64 and /62. No ``Backend`` means the ``udp`` backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from flannel.ipnet import parse_ipv4, parse_ipv4_cidr, parse_ipv6, parse_ipv6_cidr

if TYPE_CHECKING:
    from flannel.lease import Lease

__all__ = ["ConfigError", "NetworkConfig", "parse_config"]

log = logging.getLogger("flannel.config")


class ConfigError(ValueError):
    """The network config is invalid. The message names the key, the value and the fix."""


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config, with every default filled in.

    For a disabled family the network, bounds and networks are None/empty and the length 0.
    """

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
    networks: tuple[IPv4Network, ...] = ()
    """``Networks`` (kube multi-CIDR); when set, element 0 is the flannel network for rules."""
    ipv6_networks: tuple[IPv6Network, ...] = ()
    enable_nftables: bool = False
    """``EnableNFTables`` (flannel HEAD): masquerade with nftables instead of iptables."""

    @property
    def subnet_size(self) -> int:
        """Addresses per IPv4 subnet (256 for /24); 0 when IPv4 is disabled."""
        return 1 << (32 - self.subnet_len) if self.enable_ipv4 else 0

    @property
    def ipv6_subnet_size(self) -> int:
        """Addresses per IPv6 subnet; 0 when IPv6 is disabled."""
        return 1 << (128 - self.ipv6_subnet_len) if self.enable_ipv6 else 0

    @property
    def flannel_network(self) -> IPv4Network | None:
        """The network masquerade/forward rules and devices use: ``Networks[0]`` if given,
        else ``Network`` (flanneld's ``GetFlannelNetwork``)."""
        return self.networks[0] if self.networks else self.network

    @property
    def flannel_ipv6_network(self) -> IPv6Network | None:
        return self.ipv6_networks[0] if self.ipv6_networks else self.ipv6_network

    def contains_subnet(self, subnet: IPv4Network | None) -> bool:
        """Whether an IPv4 lease subnet fits this config ("compatible" in flanneld): its
        address is in [SubnetMin, SubnetMax] and its prefix is SubnetLen. When IPv4 is
        disabled only "no IPv4 subnet" fits."""
        if not self.enable_ipv4:
            return subnet is None
        if subnet is None or self.subnet_min is None or self.subnet_max is None:
            return False
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def contains_ipv6_subnet(self, subnet: IPv6Network | None) -> bool:
        """The IPv6 counterpart of :meth:`contains_subnet`."""
        if not self.enable_ipv6:
            return subnet is None
        if subnet is None or self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return False
        return (
            subnet.prefixlen == self.ipv6_subnet_len
            and self.ipv6_subnet_min <= subnet.network_address <= self.ipv6_subnet_max
        )

    def contains_lease(self, lease: Lease) -> bool:
        """Whether a lease can be kept under this config: both families compatible. A lease
        that is not must be deleted and a new subnet allocated (flanneld's reuse rule)."""
        return self.contains_subnet(lease.subnet) and self.contains_ipv6_subnet(lease.ipv6_subnet)


# --- parsing -----------------------------------------------------------------------------

_Net = TypeVar("_Net", IPv4Network, IPv6Network)
_Addr = TypeVar("_Addr", IPv4Address, IPv6Address)


@dataclass(frozen=True)
class _Family(Generic[_Net, _Addr]):
    """Key names and limits of one address family, so v4 and v6 share one validator."""

    label: str
    network_key: str
    len_key: str
    min_key: str
    max_key: str
    networks_key: str
    enable_key: str
    bits: int
    default_len: int
    max_len: int
    example_net: str
    example_addr: str
    parse_net: Callable[[str], _Net]
    parse_addr: Callable[[str], _Addr]
    addr_type: Callable[[int], _Addr]


_V4: _Family[IPv4Network, IPv4Address] = _Family(
    "IPv4", "Network", "SubnetLen", "SubnetMin", "SubnetMax", "Networks", "EnableIPv4",
    32, 24, 30, "10.244.0.0/16", "10.244.1.0", parse_ipv4_cidr, parse_ipv4, IPv4Address,
)  # fmt: skip
_V6: _Family[IPv6Network, IPv6Address] = _Family(
    "IPv6", "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "IPv6Networks",
    "EnableIPv6", 128, 64, 126, "fd00:10:244::/56", "fd00:10:244:1::",
    parse_ipv6_cidr, parse_ipv6, IPv6Address,
)  # fmt: skip


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class _Doc:
    """A JSON object with Go's key matching: case-insensitive (Unicode folding, as Go's
    ``EqualFold``), the last duplicate wins, and ``null`` is treated as absent (Go leaves
    the field at its zero value)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._fields = {key.casefold(): value for key, value in doc.items()}

    def get(self, key: str) -> Any:
        return self._fields.get(key.casefold())

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def string(self, key: str, example: str) -> str | None:
        value = self.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f'{key} {_show(value)} must be a JSON string: write it like "{key}": "{example}"'
            )
        return value

    def integer(self, key: str, example: int) -> int:
        value = self.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"{key} {_show(value)} must be a non-negative JSON integer: "
                f'write it like "{key}": {example}'
            )
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(
                f'{key} {_show(value)} must be JSON true or false: write it like "{key}": true'
            )
        return value

    def string_list(self, key: str, example: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f'{key} {_show(value)} must be a JSON list of strings: write it like "{key}": '
                f'["{example}"]'
            )
        return list(value)


def _parse_net(fam: _Family[_Net, _Addr], key: str, text: str) -> _Net:
    try:
        return fam.parse_net(text)
    except ValueError:
        raise ConfigError(
            f'{key} {_show(text)} is not an {fam.label} CIDR: write it like "{fam.example_net}"'
        ) from None


def _parse_bound(doc: _Doc, fam: _Family[_Net, _Addr], key: str) -> _Addr | None:
    text = doc.string(key, fam.example_addr)
    if text is None:
        return None
    try:
        addr = fam.parse_addr(text)
    except ValueError:
        raise ConfigError(
            f'{key} {_show(text)} is not an {fam.label} address: write it like "{fam.example_addr}"'
        ) from None
    # Go leaves a zero address at "unset", so 0.0.0.0 / :: mean "use the default".
    return None if int(addr) == 0 else addr


def _subnet_len(doc: _Doc, fam: _Family[_Net, _Addr], net: _Net) -> int:
    prefix = net.prefixlen
    smallest = fam.max_len - 2  # the longest prefix that still holds four subnets
    if prefix > smallest:
        raise ConfigError(
            f"{fam.network_key} {net} is too small: use a network with a prefix of "
            f"/{smallest} or shorter (it must hold at least four subnets)"
        )
    length = doc.integer(fam.len_key, fam.default_len)
    if length == 0:
        return fam.default_len if prefix <= fam.default_len - 2 else prefix + 2
    if length > fam.max_len or length < prefix + 2:
        raise ConfigError(
            f"{fam.len_key} {length} does not fit {fam.network_key} {net}: use a value from "
            f"{prefix + 2} to {fam.max_len} (at least four subnets per network), or remove "
            f"{fam.len_key} to use the default"
        )
    return length


def _bound(
    doc: _Doc, fam: _Family[_Net, _Addr], key: str, net: _Net, length: int, default: _Addr
) -> _Addr:
    addr = _parse_bound(doc, fam, key)
    if addr is None:
        return default
    if addr not in net:
        raise ConfigError(
            f"{key} {addr} is outside {fam.network_key} {net}: use an address inside it, "
            f"or remove {key} to use the default {default}"
        )
    size = 1 << (fam.bits - length)
    if int(addr) % size:
        aligned = fam.addr_type(int(addr) - int(addr) % size)
        raise ConfigError(
            f"{key} {addr} is not on a /{length} boundary: use {aligned} (a subnet "
            f"address), or remove {key} to use the default"
        )
    return addr


def _family(
    doc: _Doc, fam: _Family[_Net, _Addr], enabled: bool
) -> tuple[_Net | None, int, _Addr | None, _Addr | None, tuple[_Net, ...]]:
    """Resolve one family's network, SubnetLen, bounds and Networks list."""
    text = doc.string(fam.network_key, fam.example_net)
    nets_text = doc.string_list(fam.networks_key, fam.example_net)
    if not enabled:
        present = [k for k in (fam.network_key, fam.min_key, fam.max_key) if doc.has(k)]
        if doc.integer(fam.len_key, fam.default_len):
            present.append(fam.len_key)
        if nets_text:
            present.append(fam.networks_key)
        if present:
            value = _show(doc.get(present[0]))
            raise ConfigError(
                f"{present[0]} {value} is set but {fam.enable_key} is false: set "
                f'"{fam.enable_key}": true to use {fam.label}, or remove {", ".join(present)}'
            )
        return None, 0, None, None, ()
    if not text:
        hint = ' (or set "EnableIPv4": false for an IPv6-only network)' if fam is _V4 else ""
        raise ConfigError(
            f"{fam.network_key} is missing: set "
            f'"{fam.network_key}": "{fam.example_net}" to the flannel {fam.label} range{hint}'
        )
    net = _parse_net(fam, fam.network_key, text)
    if net.prefixlen == 0:
        raise ConfigError(
            f"{fam.network_key} {net} covers every address: set a private range such as "
            f'"{fam.example_net}"'
        )
    networks = tuple(_parse_net(fam, fam.networks_key, t) for t in nets_text)
    length = _subnet_len(doc, fam, net)
    size = 1 << (fam.bits - length)
    first = fam.addr_type(int(net.network_address) + size)
    last = fam.addr_type(int(net.broadcast_address) + 1 - size)
    low = _bound(doc, fam, fam.min_key, net, length, first)
    high = _bound(doc, fam, fam.max_key, net, length, last)
    if low > high:
        raise ConfigError(
            f"{fam.min_key} {low} is greater than {fam.max_key} {high}: swap them or remove "
            "both to use the defaults"
        )
    return net, length, low, high, networks


def _backend(doc: _Doc) -> tuple[str, dict[str, Any]]:
    backend = doc.get("Backend")
    if backend is None:
        log.warning(
            'the network config has no "Backend": using the udp backend; set e.g. '
            '"Backend": {"Type": "vxlan"} to choose one'
        )
        return "udp", {}
    if not isinstance(backend, dict):
        raise ConfigError(
            f'Backend {_show(backend)} must be a JSON object: write it like "Backend": '
            '{"Type": "vxlan"}'
        )
    kind = _Doc(backend).get("Type")
    if kind is None or kind == "":
        raise ConfigError(
            f'Backend {_show(backend)} has no Type: add "Type", e.g. "Backend": {{"Type": "vxlan"}}'
        )
    if not isinstance(kind, str):
        raise ConfigError(
            f'Backend.Type {_show(kind)} must be a JSON string: write it like "Type": "vxlan"'
        )
    return kind.lower(), dict(backend)


def parse_config(raw: bytes | str) -> NetworkConfig:
    """Parse and validate a network config document. Raises :class:`ConfigError`."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    try:
        doc_obj = json.loads(data)
    except ValueError as exc:
        raise ConfigError(
            f"the network config is not valid JSON ({exc}): fix it, e.g. "
            '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'
        ) from None
    if not isinstance(doc_obj, dict):
        raise ConfigError(
            f"the network config {_show(doc_obj)[:60]} is not a JSON object: write it like "
            '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'
        )
    doc = _Doc(doc_obj)
    enable_ipv4 = doc.boolean("EnableIPv4", True)
    enable_ipv6 = doc.boolean("EnableIPv6", False)
    if not (enable_ipv4 or enable_ipv6):
        raise ConfigError(
            "EnableIPv4 false and EnableIPv6 false leave no address family: enable at least "
            'one ("EnableIPv4": true is the default)'
        )
    net4, len4, min4, max4, nets4 = _family(doc, _V4, enable_ipv4)
    net6, len6, min6, max6, nets6 = _family(doc, _V6, enable_ipv6)
    backend_type, backend = _backend(doc)
    return NetworkConfig(
        network=net4,
        subnet_len=len4,
        subnet_min=min4,
        subnet_max=max4,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        ipv6_network=net6,
        ipv6_subnet_len=len6,
        ipv6_subnet_min=min6,
        ipv6_subnet_max=max6,
        backend_type=backend_type,
        backend=backend,
        raw=data,
        networks=nets4,
        ipv6_networks=nets6,
        enable_nftables=doc.boolean("EnableNFTables", False),
    )
