"""Our instance's route in the project's VPC: named as flanneld names it, next hop us.

GCE routes cannot be changed in place: a same-named route that points elsewhere is deleted
(and the delete waited for) before ours is inserted. Operations are polled with exponential
backoff up to a deadline; a finished operation's error is raised, not logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from flannel.backend import BackendError
from flannel_gce.compute import ComputeClient, GceApiError, explain_operation, link_key

__all__ = ["GceRoutes", "route_name"]

log = logging.getLogger(__name__)

PREFIX = "flannel-"
PRIORITY = 1000
FIRST_POLL = 0.5
"""Seconds before the first operation poll; later polls back off x1.6 up to MAX_POLL."""
MAX_POLL = 5.0


def route_name(subnet: IPv4Network) -> str:
    """flanneld's name for a subnet's route: ``flannel-10-1-5-0-24``."""
    return PREFIX + str(subnet).replace(".", "-").replace("/", "-")


@dataclass
class GceRoutes:
    api: ComputeClient
    network_link: str
    instance_link: str
    operation_timeout: float = 300.0

    def is_ours(self, route: dict[str, Any], subnet: IPv4Network) -> bool:
        """True if ``route`` sends ``subnet`` to our instance over our network."""
        return (
            link_key(str(route.get("nextHopInstance", ""))) == link_key(self.instance_link)
            and link_key(str(route.get("network", ""))) == link_key(self.network_link)
            and route.get("destRange") == str(subnet)
        )

    async def _call(self, method: Any, *args: Any) -> Any:
        return await asyncio.to_thread(method, *args)

    async def wait(self, op: dict[str, Any] | None, action: str) -> None:
        """Poll a global operation until DONE; raise its error or a timeout."""
        if op is None:
            return
        delay = FIRST_POLL
        deadline = time.monotonic() + self.operation_timeout
        while op.get("status") != "DONE":
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"gce: {action}: operation {op.get('name')} did not finish within "
                    f"{self.operation_timeout:g} s (status {op.get('status')}); it may still "
                    f"complete, check it with `gcloud compute operations describe`"
                )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(MAX_POLL, delay * 1.6)
            op = await self._call(self.api.get_operation, str(op["name"]))
        error = explain_operation(op, action, self.api.project)
        if error is not None:
            raise error

    async def ensure(self, subnet: IPv4Network) -> str:
        """Make the route for ``subnet`` point at us; returns "keep", "insert" or "replace"."""
        name = route_name(subnet)
        existing = await self._call(self.api.get_route, name)
        if existing is not None and self.is_ours(existing, subnet):
            return "keep"
        action = "insert"
        if existing is not None and link_key(str(existing.get("network", ""))) != link_key(
            self.network_link
        ):
            # Route names are per project: another VPC network's flannel uses this subnet.
            raise BackendError(
                f"gce: route {name} already exists for network "
                f"{link_key(str(existing.get('network')))}, not ours "
                f"({link_key(self.network_link)}): two flannel networks in project "
                f"{self.api.project} overlap; give them distinct Network ranges"
            )
        if existing is not None:
            action = "replace"
            log.info(
                "gce: route %s points at %s, not us: deleting it first",
                name,
                link_key(str(existing.get("nextHopInstance") or existing.get("nextHopIp"))),
            )
            op = await self._call(self.api.delete_route, name)
            await self.wait(op, f"delete route {name}")
        body = {
            "name": name,
            "network": self.network_link,
            "destRange": str(subnet),
            "priority": PRIORITY,
            "nextHopInstance": self.instance_link,
            "description": "flannel: pod subnet of this instance",
        }
        log.info("gce: inserting route %s %s -> %s", name, subnet, link_key(self.instance_link))
        try:
            op = await self._call(self.api.insert_route, body)
        except GceApiError as exc:
            if exc.status != 409:
                raise
            again = await self._call(self.api.get_route, name)  # lost a race: who won?
            if again is not None and self.is_ours(again, subnet):
                return action
            raise
        await self.wait(op, f"insert route {name}")
        return action

    async def remove_stale(self, subnet: IPv4Network, cidr: IPv4Network) -> list[str]:
        """Delete our routes for other subnets of the Network (left by an earlier lease)."""
        stale: list[str] = []
        for route in await self._call(self.api.list_routes):
            name = str(route.get("name", ""))
            dest = route.get("destRange")
            if not name.startswith(PREFIX) or dest == str(subnet):
                continue
            try:
                inside = IPv4Network(str(dest)).subnet_of(cidr)
            except ValueError:
                continue
            if inside and self.is_ours(route, IPv4Network(str(dest))):
                stale.append(name)
        for name in stale:
            log.info("gce: deleting route %s left by an earlier lease", name)
            op = await self._call(self.api.delete_route, name)
            await self.wait(op, f"delete route {name}")
        return stale

    async def withdraw(self, subnet: IPv4Network) -> bool:
        """Delete the route for ``subnet`` if it still points at us; True if deleted."""
        name = route_name(subnet)
        existing = await self._call(self.api.get_route, name)
        if existing is None or not self.is_ours(existing, subnet):
            return False
        op = await self._call(self.api.delete_route, name)
        await self.wait(op, f"delete route {name}")
        return True
