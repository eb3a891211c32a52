"""Peer lease events: what the subnet manager tells a backend about other hosts."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flannel.lease import Lease

__all__ = ["Event", "EventType"]


class EventType(enum.Enum):
    ADDED = "added"
    """A peer lease appeared or changed (attrs may differ from the last Added)."""
    REMOVED = "removed"
    """A peer lease was deleted or expired; ``lease.attrs`` are the last known ones."""


@dataclass(frozen=True)
class Event:
    type: EventType
    lease: Lease

    @classmethod
    def added(cls, lease: Lease) -> Event:
        return cls(EventType.ADDED, lease)

    @classmethod
    def removed(cls, lease: Lease) -> Event:
        return cls(EventType.REMOVED, lease)
