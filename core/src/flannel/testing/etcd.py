"""A real etcd server for tests: free loopback port, temp data dir, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EtcdNotInstalled", "EtcdServer", "free_port"]


class EtcdNotInstalled(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member. ``netns`` runs it inside a network namespace (via ``ip netns exec``).

    ``extra_args`` are appended to the command line (e.g. TLS flags); ``scheme`` is the
    client URL scheme (``https`` with TLS).
    """

    host: str = "127.0.0.1"
    port: int = 0
    peer_port: int = 0
    netns: str | None = None
    extra_args: Sequence[str] = ()
    scheme: str = "http"
    data_dir: Path | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdNotInstalled(
                "etcd binary not found on PATH: install it (Debian: apt-get install etcd-server)"
            )
        if self.netns is None:
            self.port = self.port or free_port(self.host)
            self.peer_port = self.peer_port or free_port(self.host)
        else:
            self.port = self.port or 2379
            self.peer_port = self.peer_port or 2380
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="flannel-etcd-"))
            self._own_dir = True
        self.log_path = self.log_path or self.data_dir / "etcd.log"
        peer_url = f"http://{self.host}:{self.peer_port}"
        cmd = [
            binary,
            "--name", "test",
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"test={peer_url}",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            f"--log-outputs={self.log_path}",
            *self.extra_args,
        ]  # fmt: skip
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, start_new_session=True,
        )  # fmt: skip
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {err[-2000:]}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd at {self.endpoint} not healthy after {timeout} s")

    def healthy(self) -> bool:
        if self.scheme != "http":
            return self._tcp_open()
        if self.netns is not None:
            return self._tcp_open_in_netns()
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                return b'"health":"true"' in resp.read()
        except OSError:
            return False

    def _tcp_open(self) -> bool:
        if self.netns is not None:
            return self._tcp_open_in_netns()
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.5):
            return True
        return False

    def _tcp_open_in_netns(self) -> bool:
        probe = subprocess.run(
            ["ip", "netns", "exec", str(self.netns), "python3", "-c",
             f"import socket; socket.create_connection(('{self.host}', {self.port}), 0.5)"],
            capture_output=True,
        )  # fmt: skip
        return probe.returncode == 0 and self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop our etcd process (by PID, never by name); keep the data dir."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[EtcdServer]:
        self.start()
        try:
            yield self
        finally:
            self.close()
