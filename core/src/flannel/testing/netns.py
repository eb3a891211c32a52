"""Network namespaces for tests: random per-run names, always deleted (also on failure)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from flannel.lab.system import netns_delete
from flannel.netlink._rtnl import in_netns

__all__ = ["Netns", "in_netns", "run_in_netns", "run_tag"]

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

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], check=check, text=True,
            capture_output=True, timeout=timeout,
        )  # fmt: skip

    def sh(self, command: str, check: bool = True) -> str:
        """Run a shell command inside the namespace and return its stdout."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, "sh", "-c", command],
            text=True, capture_output=True,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(
                f"[{self.name}] {command!r} failed ({done.returncode}): {done.stderr}"
            )
        return done.stdout

    def delete(self) -> None:
        """Kill what still runs inside (processes we started there), then the namespace."""
        netns_delete(self.name)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()



T = TypeVar("T")


def run_in_netns(name: str, body: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncio body on a fresh thread that lives in namespace ``name``.

    setns(2) is per thread: the thread enters the namespace, so every socket and device the
    body opens (netlink, TUN, UDP) belongs to it, and the caller's thread never moves.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with in_netns(name):
                box["value"] = asyncio.run(_call(body))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


async def _call(body: Callable[[], Awaitable[T]]) -> T:
    return await body()
