"""Small system helpers for the lab: namespaces, ``ip`` commands, processes by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from flannel.lab.state import ProcRecord

__all__ = [
    "LabError",
    "ip",
    "ip_batch",
    "netns_add",
    "netns_delete",
    "netns_exists",
    "ns_run",
    "proc_alive",
    "proc_record",
    "stop_proc",
]


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says what and what to do."""


def _run(argv: Sequence[str], input: str | None = None) -> str:
    done = subprocess.run(list(argv), input=input, text=True, capture_output=True)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def ip(*args: str) -> str:
    return _run(["ip", *args])


def ip_batch(netns: str, lines: Sequence[str]) -> None:
    """Run several ``ip`` commands in ``netns`` with one process (``ip -n NS -batch -``)."""
    _run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n")


def ns_run(netns: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], text=True, capture_output=True)
    if check and done.returncode != 0:
        raise LabError(
            f"[{netns}] {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done


def netns_exists(name: str) -> bool:
    return Path("/var/run/netns", name).exists()


def netns_add(name: str) -> None:
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    # No duplicate address detection on links made later in this namespace: a tentative
    # (link-local) address would stall neighbour discovery for the first second or two.
    ns_run(name, ["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0",
                  "net.ipv6.conf.all.accept_dad=0"])  # fmt: skip


def netns_delete(name: str) -> None:
    """Kill what still runs inside our namespace, then delete it (missing is fine)."""
    if not netns_exists(name):
        return
    pids = subprocess.run(["ip", "netns", "pids", name], text=True, capture_output=True)
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of stat: starttime


def proc_record(pid: int, argv: Sequence[str]) -> ProcRecord:
    return ProcRecord(pid, _start_time(pid) or 0, list(argv))


def proc_alive(rec: ProcRecord | None) -> bool:
    """True if the recorded process still runs (same PID *and* start time)."""
    return rec is not None and _start_time(rec.pid) == rec.start_time


def stop_proc(rec: ProcRecord | None, timeout: float = 10.0) -> None:
    """SIGTERM our process group, wait, then SIGKILL; never touches a reused PID."""
    if rec is None or not proc_alive(rec):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not proc_alive(rec):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGKILL)
    for _ in range(100):
        _reap(rec.pid)
        if not proc_alive(rec):
            return
        time.sleep(0.02)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
