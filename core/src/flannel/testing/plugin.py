"""pytest fixtures for flannel and for backend authors.

Enable with ``pytest_plugins = ["flannel.testing.plugin"]``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns


def _need_root() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh etcd on a free loopback port, stopped by PID after the test."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd not installed: apt-get install etcd-server (CI installs it)")
    server = EtcdServer()
    with server.running():
        yield server


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], Netns]]:
    """Make namespaces with random per-run names; all are deleted after the test."""
    _need_root()
    made: list[Netns] = []

    def make(role: str) -> Netns:
        ns = Netns(f"{role}-{len(made)}")
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.delete()
