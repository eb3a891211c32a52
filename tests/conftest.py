"""Multi-host lab fixtures, shared by every backend's lab tests.

``lab_factory(**Lab kwargs)`` builds a :class:`flannel.lab.Lab` named after the test, with
the run's random tag, brings it up and always takes it down (also when the test fails;
failing tests print each host's log tail first). ``module_lab_factory`` does the same
once per module, to reuse one lab across several checks.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flannel.lab import Lab
from flannel.testing.netns import run_tag

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
