"""pytest fixtures for flannel and for backend authors.

Enable with ``pytest_plugins = ["flannel.testing.plugin"]``:

- ``etcd_server``: a real etcd on a free loopback port, stopped by PID after the test.
- ``netns_factory``: network namespaces with random per-run names, always deleted.
- ``lab_factory(**Lab kwargs)`` / ``module_lab_factory``: a :class:`flannel.lab.Lab` (hub
  with etcd, hosts running ``flannel run``, pods) named after the test, brought up and always
  taken down, also when the test fails (failing tests print each host's log tail first).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flannel.lab import Lab
from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns, run_tag


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


LabFactory = Callable[..., Lab]


def _need_lab_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "ping", "etcdctl", "etcd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed: the lab needs iproute2, iputils-ping and etcd")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash.setdefault(_FAILED, True)  # type: ignore[arg-type]
    return report


_FAILED = pytest.StashKey[bool]()


class _Factory:
    def __init__(self, base: str) -> None:
        self.base = re.sub(r"[^a-z0-9]", "", base.lower().removeprefix("test_"))[:10] or "lab"
        self.labs: list[Lab] = []

    def __call__(self, name: str | None = None, **kwargs: Any) -> Lab:
        lab = Lab(name=name or f"{self.base}{len(self.labs)}", tag=run_tag(), **kwargs)
        self.labs.append(lab)
        lab.up()
        return lab

    def close(self, failed: bool) -> None:
        for lab in self.labs:
            if failed:
                for host in lab.hosts:
                    tail = "\n".join(lab.logs(host).splitlines()[-25:])
                    print(f"----- {lab.name}/{host} log tail -----\n{tail}")
            lab.down()


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    _need_lab_tools()
    factory = _Factory(request.node.name)
    try:
        yield factory
    finally:
        factory.close(request.node.stash.get(_FAILED, False))


@pytest.fixture(scope="module")
def module_lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    _need_lab_tools()
    factory = _Factory(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    try:
        yield factory
    finally:
        failed = request.session.testsfailed > 0
        factory.close(failed)
