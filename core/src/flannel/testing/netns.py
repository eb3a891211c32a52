"""Network namespaces for tests: random per-run names, always deleted (also on failure)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence

__all__ = ["Netns", "netns_exec", "run_tag"]

_RUN_TAG = secrets.token_hex(3)


def run_tag() -> str:
    """A random tag shared by every namespace this process makes, so runs never collide."""
    return _RUN_TAG


class Netns:
    """A named network namespace owned by the test that made it."""

    def __init__(self, role: str) -> None:
        self.name = f"fl{_RUN_TAG}-{role}"[:64]
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.sh("ip link set lo up")

    def run(self, argv: Sequence[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], check=check, text=True,
            capture_output=True, **kw,  # type: ignore[call-overload]
        )  # fmt: skip

    def sh(self, command: str, check: bool = True) -> str:
        """Run a shell command inside the namespace and return its stdout."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, "sh", "-c", command],
            text=True, capture_output=True,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"[{self.name}] {command!r} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def delete(self) -> None:
        # Kill anything still running inside (processes we started there), then the netns.
        pids = subprocess.run(["ip", "netns", "pids", self.name], text=True, capture_output=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


@contextlib.contextmanager
def netns_exec(name: str) -> Iterator[None]:
    """Switch this thread into namespace ``name`` for the block (restores afterwards)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        os.setns(target, os.CLONE_NEWNET)
        yield
    finally:
        os.setns(own, os.CLONE_NEWNET)
        os.close(own)
        os.close(target)
