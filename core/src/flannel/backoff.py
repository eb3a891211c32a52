"""Exponential backoff with jitter, the one retry pacing used everywhere in the daemon.

Delays grow ``first * 2**n`` up to ``cap``, each scaled by a random factor in [0.5, 1] so
hosts that failed together do not retry together. :meth:`Backoff.failed` also logs: the
first failure of a streak as a warning, repeats at debug level (an outage must not flood
the log); :meth:`Backoff.succeeded` ends the streak.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    def __init__(
        self,
        first: float = 0.1,
        cap: float = 5.0,
        *,
        logger: logging.Logger | None = None,
        describe: Callable[[BaseException], str] = str,
    ) -> None:
        self.first, self.cap = first, cap
        self.attempt = 0
        self.failures = 0
        self.log = logger or logging.getLogger("flannel.backoff")
        self.describe = describe

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    next = next_delay

    def reset(self) -> None:
        self.attempt = 0

    async def failed(self, what: str, exc: BaseException) -> None:
        """Log ``what`` failed with ``exc`` and sleep the next delay.

        If our task was asked to stop while the failing call ran (some libraries, grpc among
        them, turn a cancellation into their own error), this raises CancelledError instead
        of retrying: a retry loop must never swallow the stop signal.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        delay = self.next_delay()
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        self.log.log(level, "%s: %s; retrying in %.1f s", what, self.describe(exc), delay)
        await asyncio.sleep(delay)

    def succeeded(self, what: str) -> None:
        if self.failures:
            self.log.info("%s: recovered after %d retries", what, self.failures)
        self.failures = 0
        self.reset()
