"""sd_notify over a real unix datagram socket (as systemd would listen)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from flannel import sdnotify


def test_ready_and_stopping_reach_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.ready("subnet 10.244.1.0/24")
        assert sock.recv(100) == b"READY=1\nSTATUS=subnet 10.244.1.0/24"
        assert sdnotify.stopping()
        assert sock.recv(100) == b"STOPPING=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"flannel-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_without_systemd_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.stopping() is False  # logged, not raised
