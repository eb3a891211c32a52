"""subnet.env: flanneld's exact bytes, atomic replacement, and a tolerant read-back."""

from __future__ import annotations

import json
import os
import stat
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from flannel.config import NetworkConfig, parse_config
from flannel.lease import Lease
from flannel.manager import PreviousSubnets
from flannel.subnetenv import (
    SubnetEnv,
    read_subnet_env,
    remove_subnet_env,
    render_subnet_env,
    write_subnet_env,
)


def cfg(**keys: Any) -> NetworkConfig:
    keys.setdefault("Backend", {"Type": "vxlan"})
    return parse_config(json.dumps(keys))


V4 = cfg(Network="10.1.0.0/16")
DUAL = cfg(Network="10.1.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48")
ONLY6 = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48")
LEASE4 = Lease(IPv4Network("10.1.74.0/24"))
LEASE_DUAL = Lease(IPv4Network("10.1.74.0/24"), ipv6_subnet=IPv6Network("fc00:0:0:5::/64"))
LEASE6 = Lease(None, ipv6_subnet=IPv6Network("fc00:0:0:5::/64"))


def test_ipv4_bytes(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, V4, LEASE4, mtu=1450, ip_masq=True)
    assert path.read_bytes() == (
        b"FLANNEL_NETWORK=10.1.0.0/16\n"
        b"FLANNEL_SUBNET=10.1.74.1/24\n"
        b"FLANNEL_MTU=1450\n"
        b"FLANNEL_IPMASQ=true\n"
    )


def test_dual_stack_bytes(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, DUAL, LEASE_DUAL, mtu=1500, ip_masq=False)
    assert path.read_bytes() == (
        b"FLANNEL_NETWORK=10.1.0.0/16\n"
        b"FLANNEL_SUBNET=10.1.74.1/24\n"
        b"FLANNEL_IPV6_NETWORK=fc00::/48\n"
        b"FLANNEL_IPV6_SUBNET=fc00:0:0:5::1/64\n"
        b"FLANNEL_MTU=1500\n"
        b"FLANNEL_IPMASQ=false\n"
    )


def test_ipv6_only_bytes() -> None:
    assert render_subnet_env(ONLY6, LEASE6, 1280, False) == (
        "FLANNEL_IPV6_NETWORK=fc00::/48\n"
        "FLANNEL_IPV6_SUBNET=fc00:0:0:5::1/64\n"
        "FLANNEL_MTU=1280\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_network_line_is_network_not_networks0() -> None:
    c = cfg(Network="10.1.0.0/16", Networks=["10.9.0.0/16"])
    assert render_subnet_env(c, LEASE4, 1450, False).startswith("FLANNEL_NETWORK=10.1.0.0/16\n")


def test_lease_missing_family_is_an_error() -> None:
    with pytest.raises(ValueError, match="no IPv4 subnet"):
        render_subnet_env(V4, LEASE6, 1450, False)
    with pytest.raises(ValueError, match="no IPv6 subnet"):
        render_subnet_env(DUAL, LEASE4, 1450, False)


def test_creates_directories_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "subnet.env"
    old_umask = os.umask(0o077)
    try:
        write_subnet_env(path, V4, LEASE4, 1450, False)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.parent.is_dir()
    assert sorted(p.name for p in path.parent.iterdir()) == ["subnet.env"]  # no temp left


def test_replace_is_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, V4, LEASE4, 1450, False)
    with open(path, "rb") as held:  # a reader holding the old file keeps the old content
        old_inode = os.fstat(held.fileno()).st_ino
        write_subnet_env(path, V4, Lease(IPv4Network("10.1.9.0/24")), 1450, False)
        assert b"10.1.74.1/24" in held.read()
    assert path.stat().st_ino != old_inode
    assert b"FLANNEL_SUBNET=10.1.9.1/24\n" in path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.env"]


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, V4, LEASE4, 1450, False)
    before = path.read_bytes()
    # A directory where the temp file goes makes the write fail.
    (tmp_path / ".subnet.env").mkdir()
    with pytest.raises(OSError):
        write_subnet_env(path, V4, Lease(IPv4Network("10.1.9.0/24")), 1450, False)
    assert path.read_bytes() == before


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, DUAL, LEASE_DUAL, 1450, True)
    env = read_subnet_env(path)
    assert env == SubnetEnv(
        network=IPv4Network("10.1.0.0/16"),
        subnet=IPv4Network("10.1.74.0/24"),
        ipv6_network=IPv6Network("fc00::/48"),
        ipv6_subnet=IPv6Network("fc00:0:0:5::/64"),
        mtu=1450,
        ip_masq=True,
    )
    assert env.previous == PreviousSubnets(
        subnet=IPv4Network("10.1.74.0/24"), ipv6_subnet=IPv6Network("fc00:0:0:5::/64")
    )


def test_tolerant_dotenv(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(
        b"\xef\xbb\xbf# written by hand\r\n"
        b"export FLANNEL_NETWORK='10.2.0.0/16'\r\n"
        b'  FLANNEL_SUBNET = "10.2.3.1/24"  \n'
        b"garbage line without separator\n"
        b"FLANNEL_MTU: 1400\n"
        b"FLANNEL_IPMASQ=TRUE # comment\n"
        b"FLANNEL_IPV6_SUBNET=not-an-address\n"
    )
    env = read_subnet_env(path)
    assert env.network == IPv4Network("10.2.0.0/16")
    assert env.subnet == IPv4Network("10.2.3.0/24")
    assert env.mtu == 1400
    assert env.ip_masq is True
    assert env.ipv6_subnet is None and env.ipv6_network is None


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\xff\xfe garbage \x01", b"FLANNEL_SUBNET=10.1.300.1/24\nFLANNEL_MTU=big\n",
     b"FLANNEL_SUBNET\n=10.1.1.1/24\n", b"FLANNEL_SUBNET=fc00::1/64\n"],
)  # fmt: skip
def test_garbled_file_gives_empty_result(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(content)
    assert read_subnet_env(path) == SubnetEnv()
    assert read_subnet_env(path).previous == PreviousSubnets()


def test_missing_or_unreadable_path_gives_empty_result(tmp_path: Path) -> None:
    assert read_subnet_env(tmp_path / "nope.env") == SubnetEnv()
    assert read_subnet_env(tmp_path) == SubnetEnv()  # a directory
    assert read_subnet_env("") == SubnetEnv()
    assert read_subnet_env("bad\x00path") == SubnetEnv()


def test_last_assignment_wins(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_SUBNET=10.1.2.1/24\n")
    assert read_subnet_env(path).subnet == IPv4Network("10.1.2.0/24")


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, V4, LEASE4, 1450, False)
    (tmp_path / ".subnet.env").write_text("stale temp")
    remove_subnet_env(path)
    assert list(tmp_path.iterdir()) == []
    remove_subnet_env(path)  # missing is fine
