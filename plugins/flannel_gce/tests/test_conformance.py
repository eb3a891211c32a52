"""gce runs the backend conformance suite through the real daemon in the namespace lab.

The fake Compute API and metadata server serve from the hub (198.18.0.1, nothing else); each
lab host is one instance, told apart by its source address. GCE routes carry pod traffic,
not the kernel, so the suite's data-path and kernel-route checks are off; the checks after
it read the project's routes instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any, ClassVar

import pytest
from gce_hub_fakes import COMPUTE_URL, METADATA_URL, GceHubFakes

from flannel.lab import Lab
from flannel.lab.topology import host_addresses
from flannel.testing.conformance import OwnRouteConformance
from flannel_gce.compute import link_key
from flannel_gce.routes import route_name

NETWORK = IPv4Network("10.244.0.0/16")
CLEARED_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "FLANNEL_GCE_METADATA_URL",
    "FLANNEL_GCE_COMPUTE_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


class TestGceConformance(OwnRouteConformance):
    backend = "gce"
    backend_options = {"MetadataEndpoint": METADATA_URL, "ComputeEndpoint": COMPUTE_URL}

    fakes: ClassVar[GceHubFakes | None] = None
    instances: ClassVar[dict[str, dict[str, str]]] = {}
    """Lab host address -> its instance name and selfLink."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def daemon_env(cls) -> Iterator[None]:
        """The daemons inherit this process's environment: no real credentials or proxies."""
        with pytest.MonkeyPatch.context() as mp:
            for name in CLEARED_ENV:
                mp.delenv(name, raising=False)
            yield

    def prepare_lab(self, lab: Lab) -> None:
        first = lab.state.next_index
        addresses = [host_addresses(i, 0)[0] for i in range(first, first + lab.initial_hosts)]
        fakes = GceHubFakes(lab.state.hub, lab.dir, addresses)
        type(self).fakes = fakes
        type(self).instances = fakes.start()

    def cleanup_lab(self, lab: Lab) -> None:
        if self.fakes is not None:
            self.fakes.stop()
            type(self).fakes = None

    # -- cloud state, read from the fakes ------------------------------------------------

    def cloud_routes(self) -> dict[str, list[dict[str, Any]]]:
        """Destination range inside the Network -> its routes, over the project."""
        assert self.fakes is not None
        found: dict[str, list[dict[str, Any]]] = {}
        for route in self.fakes.status()["routes"].values():
            cidr = route.get("destRange")
            if cidr and IPv4Network(cidr).subnet_of(NETWORK):
                found.setdefault(cidr, []).append(route)
        return found

    def route_target(self, route: dict[str, Any]) -> str | None:
        return link_key(str(route.get("nextHopInstance", "")))

    def target_of(self, lab: Lab, name: str) -> str:
        return link_key(self.instances[lab.host(name).address]["link"])

    def route_problem(self, subnet: str, routes: list[dict[str, Any]]) -> str | None:
        names = [r.get("name") for r in routes]
        if names != [route_name(IPv4Network(subnet))]:  # flanneld's name, once
            return f"{subnet} has routes named {names}"
        return None
