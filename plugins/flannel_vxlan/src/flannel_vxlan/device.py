"""The vxlan device (``flannel.<VNI>`` / ``flannel-v6.<VNI>``): create, reuse, address it.

A compatible existing device is reused as is, so its MAC (the VtepMAC peers have in their
FDB) survives daemon restarts; an incompatible one is deleted and recreated with a fresh
random MAC. All functions block (pyroute2); call them with ``asyncio.to_thread``. They act
on the calling thread's network namespace.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_interface
from typing import Any

from flannel.backend import BackendError

__all__ = [
    "Device",
    "DeviceSpec",
    "device_name",
    "ensure_address",
    "ensure_device",
    "random_mac",
]

log = logging.getLogger("flannel.vxlan")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
_IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class DeviceSpec:
    """What the device must look like."""

    name: str
    vni: int
    local: IPAddress
    link_index: int
    port: int
    """Effective UDP port (8472 when the option is 0)."""
    learning: bool
    gbp: bool
    mtu: int

    @property
    def family(self) -> int:
        return self.local.version


@dataclass(frozen=True)
class Device:
    name: str
    index: int
    mac: str
    mtu: int
    created: bool
    """False when an existing compatible device was reused."""


def device_name(vni: int, ipv6: bool) -> str:
    return f"flannel-v6.{vni}" if ipv6 else f"flannel.{vni}"


def random_mac() -> str:
    """A random locally-administered unicast MAC, as flanneld makes for the VtepMAC."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _ipr() -> Any:
    from pyroute2 import IPRoute  # lazy: keeps the daemon's import path lean

    return IPRoute()


def _vxlan_info(link: Any) -> dict[str, Any] | None:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    if data is None:
        return {}
    return {name: value for name, value in data["attrs"]}


def _incompatible(spec: DeviceSpec, info: dict[str, Any] | None) -> str:
    """Why an existing device cannot be reused ('' if it can)."""
    if info is None:
        return "it is not a vxlan device"
    local_key = "IFLA_VXLAN_LOCAL6" if spec.family == 6 else "IFLA_VXLAN_LOCAL"
    checks = [
        ("VNI", info.get("IFLA_VXLAN_ID"), spec.vni),
        ("local address", str(info.get(local_key)), str(spec.local)),
        ("underlay device index", info.get("IFLA_VXLAN_LINK"), spec.link_index),
        ("port", info.get("IFLA_VXLAN_PORT"), spec.port),
        ("learning", bool(info.get("IFLA_VXLAN_LEARNING")), spec.learning),
        ("GBP", bool(info.get("IFLA_VXLAN_GBP")), spec.gbp),
        ("group", info.get("IFLA_VXLAN_GROUP6" if spec.family == 6 else "IFLA_VXLAN_GROUP"),
         None),
    ]  # fmt: skip
    for what, have, want in checks:
        if what == "group":
            if have not in (None, "0.0.0.0", "::"):
                return f"it has multicast group {have} (flannel uses none)"
            continue
        if have != want:
            return f"its {what} is {have}, wanted {want}"
    return ""


def ensure_device(spec: DeviceSpec) -> Device:
    """Reuse a compatible ``spec.name`` or (re)create it; set its MTU and bring it up."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr() as ipr:
        existing = ipr.link_lookup(ifname=spec.name)
        if existing:
            link = ipr.link("get", index=existing[0])[0]
            why = _incompatible(spec, _vxlan_info(link))
            if not why:
                index = int(link["index"])
                if link.get_attr("IFLA_MTU") != spec.mtu:
                    ipr.link("set", index=index, mtu=spec.mtu)
                if spec.family == 6:
                    _sysctl(f"/proc/sys/net/ipv6/conf/{spec.name}/accept_ra", "0")
                ipr.link("set", index=index, state="up")
                mac = str(link.get_attr("IFLA_ADDRESS")).lower()
                log.info("reusing %s (VtepMAC %s)", spec.name, mac)
                return Device(spec.name, index, mac, spec.mtu, created=False)
            log.warning(
                "%s already exists with incompatible configuration (%s): recreating device",
                spec.name, why,
            )  # fmt: skip
            ipr.link("del", index=existing[0])
        mac = random_mac()
        attrs: dict[str, Any] = {
            "ifname": spec.name,
            "kind": "vxlan",
            "vxlan_id": spec.vni,
            "vxlan_link": spec.link_index,
            "vxlan_port": spec.port,
            "vxlan_learning": 1 if spec.learning else 0,
            "address": mac,
            "mtu": spec.mtu,
        }
        attrs["vxlan_local6" if spec.family == 6 else "vxlan_local"] = str(spec.local)
        if spec.gbp:
            attrs["vxlan_gbp"] = True
        try:
            ipr.link("add", **attrs)
        except NetlinkError as exc:
            raise BackendError(
                f"cannot create vxlan device {spec.name} (VNI {spec.vni}, local {spec.local}, "
                f"port {spec.port}): {exc}; check that no other vxlan device uses this VNI and "
                "port"
            ) from exc
        index = int(ipr.link_lookup(ifname=spec.name)[0])
        if spec.family == 6:
            _sysctl(f"/proc/sys/net/ipv6/conf/{spec.name}/accept_ra", "0")
        ipr.link("set", index=index, state="up")
        log.info("created %s (VNI %d, VtepMAC %s, MTU %d)", spec.name, spec.vni, mac, spec.mtu)
        return Device(spec.name, index, mac, spec.mtu, created=True)


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as exc:
        log.warning("cannot set %s to %s: %s", path, value, exc)


def ensure_address(index: int, subnet: IPNetwork, flannel_network: IPNetwork | None) -> None:
    """Give the device ``<subnet network address>/32`` (/128 for IPv6) and remove the other
    addresses it has inside the flannel network (IPv6: every non-link-local address)."""
    want = ip_interface(f"{subnet.network_address}/{subnet.max_prefixlen}")
    family = 10 if subnet.version == 6 else 2
    with _ipr() as ipr:
        present = False
        for msg in ipr.addr("dump", index=index, family=family):
            addr = ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if addr == want:
                present = True
                continue
            if subnet.version == 6:
                stale = not addr.ip.is_link_local
            else:
                stale = flannel_network is None or addr.ip in flannel_network
            if stale:
                log.info("removing stale address %s from device #%d", addr, index)
                ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        if not present:
            # No DAD: the lease makes the address unique, and DAD would delay it by ~1 s.
            ipr.addr(
                "add", index=index, address=str(want.ip), prefixlen=want.network.prefixlen,
                flags=_IFA_F_NODAD if subnet.version == 6 else 0,
            )  # fmt: skip
        ipr.link("set", index=index, state="up")
