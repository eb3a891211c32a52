"""Why run() was cancelled: plain shutdown keeps our cloud route, a lost lease removes it.

flanneld keeps its lease across a clean restart, so the route must survive a plain shutdown
(deleting it would blackhole this host's pods until the daemon is back). When the lease is
gone (released, revoked, expired, taken over) the subnet is no longer ours and neither is
the route. The host says which it is by setting ``network.stop_reason`` before it
cancels ``run()`` (proposed core API: a string, or an enum whose value is one of
``LEASE_GONE``). Without it we assume a plain shutdown, unless the lease has already
expired. A stale route left by a lost lease is also removed the next time this host
registers (see ``plan.py``), so nothing leaks for long.
"""

from __future__ import annotations

import time

from flannel.backend import BackendNetwork

__all__ = ["LEASE_GONE", "lease_gone"]

LEASE_GONE = frozenset(
    {"lease_lost", "lease_released", "lease_revoked", "lost", "released", "revoked"}
)


def lease_gone(network: BackendNetwork) -> bool:
    """True when the host stopped this network because its lease is no longer ours."""
    reason = getattr(network, "stop_reason", None)
    value = getattr(reason, "value", reason)
    if isinstance(value, str) and value.lower() in LEASE_GONE:
        return True
    expiration = network.lease.expiration
    return expiration is not None and expiration <= time.time()
