"""aws-vpc test fixtures: a loopback-only guard, moto's EC2 server, fake metadata services."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # aws_fakes, aws_netguard (unique names)

from aws_fakes import CLEARED_ENV, CountingMotoServer

from flannel.testing.netguard import loopback_only

__all__ = ["loopback_only"]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, no config files, no metadata lookups by botocore itself."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("flannel_awsvpc.imds.TIMEOUT", 10.0)  # a loaded test machine


@pytest.fixture(scope="module")
def moto_server() -> Iterator[CountingMotoServer]:
    server = CountingMotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ec2_server(moto_server: CountingMotoServer) -> CountingMotoServer:
    """The moto EC2 server, emptied for this test."""
    moto_server.reset()
    return moto_server
