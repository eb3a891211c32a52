"""The hooks a backend plugin implements. This page is the whole plugin contract.

A plugin is a module (or object) with functions marked ``@hookimpl``, published through
the ``flannel`` entry-point group::

    [project.entry-points.flannel]
    mybackend = "flannel_mybackend"

The host asks every plugin :func:`backend_types` at load time; for a network it then calls
the other hooks on the one plugin that provides the configured ``Backend.Type`` and on no
other. The three network hooks may be ``async def`` (the host awaits what they return).
See :mod:`flannel.backend` for the lifecycle and docs/writing-a-backend.md for a walkthrough.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from flannel.backend import BackendContext, BackendNetwork
    from flannel.events import Event

PROJECT = "flannel"
ENTRY_POINT_GROUP = "flannel"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def backend_types() -> Sequence[str]:
    """Return the ``Backend.Type`` values this plugin provides, lower-case (e.g. ``["vxlan"]``).

    Called once per plugin when plugins load. Must be cheap: no I/O, no heavy imports.

    .. versionadded:: 0.1
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def register_network(
    backend_type: str, ctx: BackendContext
) -> BackendNetwork | Awaitable[BackendNetwork]:
    """Set up this host's side of a network and acquire its lease.

    Validate ``ctx.backend_options`` (raise :class:`flannel.backend.BackendConfigError` naming
    the key and value), prepare local state, call ``await ctx.acquire_lease(...)`` once, then
    finish lease-dependent setup and return a :class:`flannel.backend.BackendNetwork`.
    Called again after the lease was lost and re-acquired (the previous network's ``run``
    has been cancelled by then). Only called on the plugin that provides ``backend_type``.

    .. versionadded:: 0.1
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def run(network: BackendNetwork) -> None | Awaitable[None]:
    """Run the network until cancelled: reconcile loops, a userspace data path, ...

    Runs as its own task. ``asyncio.CancelledError`` is the stop signal: release what must
    not outlive the daemon in ``finally`` and re-raise. Returning early is allowed for
    backends with nothing to run; raising ends the network and the host re-initialises it
    with backoff.

    .. versionadded:: 0.1
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def handle_events(network: BackendNetwork, events: Sequence[Event]) -> None | Awaitable[None]:
    """Apply one batch of peer lease events (``Added``/``Removed``) to the data path.

    Awaited once per batch, never concurrently with itself, only after ``run`` started. The
    first batch lists every known peer as ``Added``; later ``Added`` events for a known
    subnet mean its attributes changed. Ignore (with a warning) leases of other backend
    types. Per-peer failures should be logged and retried by the reconcile loop, not raised.

    .. versionadded:: 0.1
    """
    raise NotImplementedError
