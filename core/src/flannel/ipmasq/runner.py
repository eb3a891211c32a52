"""Running the firewall tools (iptables-restore, iptables-save, nft) from asyncio.

A runner is any ``async (argv, stdin) -> CommandResult``. The default runs the command in
this process's network namespace; :func:`netns_runner` prefixes ``ip netns exec NAME`` (how
tests drive a namespace without moving the test process). Wrapping a runner is how callers
observe which commands ran (e.g. to prove a resync made no writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

__all__ = ["CommandError", "CommandResult", "Runner", "netns_runner", "run_command"]


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.returncode != 0:
            raise CommandError(self)
        return self


class CommandError(RuntimeError):
    """A firewall command failed; the message has the command, exit code and stderr."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        err = result.stderr.strip().replace("\n", "; ") or "no output"
        super().__init__(f"{' '.join(result.argv)} exited {result.returncode}: {err}")


Runner = Callable[[Sequence[str], "str | None"], Awaitable[CommandResult]]


async def run_command(argv: Sequence[str], stdin: str | None = None) -> CommandResult:
    """Run ``argv`` (no shell), feeding ``stdin``; a missing binary gives returncode 127."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return CommandResult(tuple(argv), proc.returncode, out.decode(), err.decode())


def netns_runner(netns: str, inner: Runner = run_command) -> Runner:
    """A runner that executes every command inside network namespace ``netns``."""

    async def run(argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        result = await inner(["ip", "netns", "exec", netns, *argv], stdin)
        return CommandResult(tuple(argv), result.returncode, result.stdout, result.stderr)

    return run
