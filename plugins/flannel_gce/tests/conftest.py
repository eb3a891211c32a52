"""gce test fixtures: a loopback-only guard, a fake Compute API and fake metadata servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # gce_fakes, gce_netguard (unique names)

from gce_fakes import FakeCompute

from flannel.testing.netguard import loopback_only

__all__ = ["loopback_only"]


@pytest.fixture(autouse=True)
def gce_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real credentials, endpoints or proxies from the environment."""
    for name in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
        "FLANNEL_GCE_METADATA_URL",
        "FLANNEL_GCE_COMPUTE_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr("flannel_gce.routes.FIRST_POLL", 0.01)  # the fake is quick
    monkeypatch.setattr("flannel_gce.metadata.TIMEOUT", (10.0, 10.0))  # a loaded test machine


@pytest.fixture
def compute() -> Iterator[FakeCompute]:
    fake = FakeCompute()
    try:
        yield fake
    finally:
        fake.close()
