"""aws-vpc runs the backend conformance suite through the real daemon in the namespace lab.

moto's EC2 and a fake IMDS serve from the hub (198.18.0.1, nothing else), each lab host is
one instance whose ENI holds its underlay address. VPC routes carry pod traffic on AWS, not
the kernel, so the suite's data-path and kernel-route checks are off; the checks after it
read the VPC route tables instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any, ClassVar

import pytest
from aws_fakes import CLEARED_ENV
from aws_hub_fakes import DUMMY_ENV, EC2_URL, IMDS_URL, AwsHubFakes

from flannel.lab import Lab
from flannel.lab.topology import host_addresses
from flannel.testing.conformance import OwnRouteConformance

NETWORK = IPv4Network("10.244.0.0/16")


class TestAwsVpcConformance(OwnRouteConformance):
    backend = "aws-vpc"
    backend_options = {"MetadataEndpoint": IMDS_URL, "EC2Endpoint": EC2_URL}

    fakes: ClassVar[AwsHubFakes | None] = None
    instances: ClassVar[dict[str, dict[str, str]]] = {}
    """Lab host address -> its instance and ENI."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def daemon_env(cls) -> Iterator[None]:
        """The daemons inherit this process's environment: dummy keys, no real AWS."""
        with pytest.MonkeyPatch.context() as mp:
            for name in CLEARED_ENV:
                mp.delenv(name, raising=False)
            for name, value in DUMMY_ENV.items():
                mp.setenv(name, value)
            yield

    def prepare_lab(self, lab: Lab) -> None:
        first = lab.state.next_index
        addresses = [host_addresses(i, 0)[0] for i in range(first, first + lab.initial_hosts)]
        fakes = AwsHubFakes(lab.state.hub, lab.dir, addresses)
        type(self).fakes = fakes
        type(self).instances = fakes.start()

    def cleanup_lab(self, lab: Lab) -> None:
        if self.fakes is not None:
            self.fakes.stop()
            type(self).fakes = None

    # -- cloud state, read from the fakes ------------------------------------------------

    def cloud_routes(self) -> dict[str, list[dict[str, Any]]]:
        """Destination CIDR inside the Network -> its routes, over every route table."""
        assert self.fakes is not None
        found: dict[str, list[dict[str, Any]]] = {}
        for table in self.fakes.status()["route_tables"]:
            for route in table.get("Routes", []):
                cidr = route.get("DestinationCidrBlock")
                if cidr and IPv4Network(cidr).subnet_of(NETWORK):
                    found.setdefault(cidr, []).append(route)
        return found

    def route_target(self, route: dict[str, Any]) -> str | None:
        return route.get("NetworkInterfaceId") if route.get("State") == "active" else None

    def target_of(self, lab: Lab, name: str) -> str:
        return self.instances[lab.host(name).address]["eni_id"]
