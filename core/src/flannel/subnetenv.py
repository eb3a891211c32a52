"""subnet.env: the file container runtimes and CNI read to learn this host's subnet.

Written exactly as flanneld v0.20 writes it (same variables, order, ``\\n`` endings, no
quotes), atomically, so a reader never sees half a file. Read back at startup as the
previous-subnet hint (flanneld's dotenv read), tolerantly: a missing or garbled file is
simply "no previous subnet".
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from flannel.config import NetworkConfig
from flannel.ipnet import first_host, parse_ipv4_cidr, parse_ipv6_cidr
from flannel.lease import Lease
from flannel.manager import PreviousSubnets

__all__ = [
    "DEFAULT_SUBNET_FILE",
    "SubnetEnv",
    "read_subnet_env",
    "remove_subnet_env",
    "render_subnet_env",
    "write_subnet_env",
]

DEFAULT_SUBNET_FILE = Path("/run/flannel/subnet.env")

_MAX_READ = 1 << 20  # a real subnet.env is ~150 bytes; never slurp a huge stray file


@dataclass(frozen=True)
class SubnetEnv:
    """What a previous subnet.env recorded. Subnets are masked to their network
    (``FLANNEL_SUBNET=10.1.74.1/24`` gives 10.1.74.0/24); unreadable values are None."""

    network: IPv4Network | None = None
    subnet: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None
    mtu: int | None = None
    ip_masq: bool | None = None

    @property
    def previous(self) -> PreviousSubnets:
        """The reuse hint for :meth:`flannel.manager.SubnetManager.acquire_lease`."""
        return PreviousSubnets(subnet=self.subnet, ipv6_subnet=self.ipv6_subnet)


def render_subnet_env(config: NetworkConfig, lease: Lease, mtu: int, ip_masq: bool) -> str:
    """The file's text: ``FLANNEL_NETWORK``, ``FLANNEL_SUBNET`` (IPv4 enabled),
    ``FLANNEL_IPV6_NETWORK``, ``FLANNEL_IPV6_SUBNET`` (IPv6 enabled), ``FLANNEL_MTU``,
    ``FLANNEL_IPMASQ``. The subnet lines carry the first address (network + 1)."""
    lines: list[str] = []
    if config.enable_ipv4:
        if config.network is None or lease.subnet is None:
            raise ValueError(f"IPv4 is enabled but lease {lease.key} has no IPv4 subnet")
        lines.append(f"FLANNEL_NETWORK={config.network}")
        lines.append(f"FLANNEL_SUBNET={first_host(lease.subnet)}")
    if config.enable_ipv6:
        if config.ipv6_network is None or lease.ipv6_subnet is None:
            raise ValueError(f"IPv6 is enabled but lease {lease.key} has no IPv6 subnet")
        lines.append(f"FLANNEL_IPV6_NETWORK={config.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={first_host(lease.ipv6_subnet)}")
    lines.append(f"FLANNEL_MTU={mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}")
    return "".join(line + "\n" for line in lines)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden sibling, fsync, then rename over ``path`` (mode 0644)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o644)
        try:
            os.fchmod(fd, 0o644)  # independent of the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_subnet_env(
    path: str | os.PathLike[str], config: NetworkConfig, lease: Lease, mtu: int, ip_masq: bool
) -> None:
    """Write subnet.env atomically (creates the directory, 0755). Raises OSError."""
    _atomic_write(Path(path), render_subnet_env(config, lease, mtu, ip_masq).encode())


def _parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=value`` lines as godotenv reads them: ``export`` prefix, quotes, comments and
    ``KEY: value`` tolerated; lines that are none of these are skipped."""
    values: dict[str, str] = {}
    for raw_line in text.lstrip("\ufeff").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not key.replace("_", "").isalnum():
            continue
        if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def _cidr4(value: str | None) -> IPv4Network | None:
    try:
        return parse_ipv4_cidr(value) if value else None
    except ValueError:
        return None


def _cidr6(value: str | None) -> IPv6Network | None:
    try:
        return parse_ipv6_cidr(value) if value else None
    except ValueError:
        return None


def read_subnet_env(path: str | os.PathLike[str]) -> SubnetEnv:
    """Read a previous subnet.env. Never raises: a missing, unreadable or garbled file (or
    value) gives empty fields."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_READ)
    except (OSError, ValueError):
        return SubnetEnv()
    values = _parse_dotenv(data.decode("utf-8", errors="replace"))
    mtu_text = values.get("FLANNEL_MTU", "")
    masq = values.get("FLANNEL_IPMASQ", "").lower()
    return SubnetEnv(
        network=_cidr4(values.get("FLANNEL_NETWORK")),
        subnet=_cidr4(values.get("FLANNEL_SUBNET")),
        ipv6_network=_cidr6(values.get("FLANNEL_IPV6_NETWORK")),
        ipv6_subnet=_cidr6(values.get("FLANNEL_IPV6_SUBNET")),
        mtu=int(mtu_text) if mtu_text.isascii() and mtu_text.isdigit() else None,
        ip_masq={"true": True, "false": False}.get(masq),
    )


def remove_subnet_env(path: str | os.PathLike[str]) -> None:
    """Delete subnet.env (and a leftover temp file); a missing file is fine."""
    target = Path(path)
    for victim in (target, target.parent / f".{target.name}"):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()
