"""systemd readiness notification (``Type=notify``), stdlib only.

``READY=1`` after the first subnet.env is written, ``STOPPING=1`` when shutdown starts.
Without ``NOTIFY_SOCKET`` (not under systemd) every call is a no-op returning False;
send failures are logged, never raised (as flanneld: a notify problem must not stop it).
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "ready", "status", "stopping"]

log = logging.getLogger(__name__)


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to $NOTIFY_SOCKET; True when it was sent."""
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path[0] not in "/@":
        log.warning("NOTIFY_SOCKET is not a unix socket path", extra={"notify_socket": path})
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # '@' = abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed", extra={"state": state, "error": str(exc)})
        return False
    return True


def ready(status_text: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
