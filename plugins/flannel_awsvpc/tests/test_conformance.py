"""aws-vpc runs the backend conformance suite through the real daemon in the namespace lab.

moto's EC2 and a fake IMDS serve from the hub (198.18.0.1, nothing else), each lab host is
one instance whose ENI holds its underlay address. VPC routes carry pod traffic on AWS, not
the kernel, so the suite's data-path and kernel-route checks are off; the checks after it
read the VPC route tables instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any, ClassVar

import pytest
from aws_hub_fakes import DUMMY_ENV, EC2_URL, IMDS_URL, AwsHubFakes

from flannel.lab import Lab
from flannel.lab.topology import host_addresses
from flannel.lease import LeaseAttrs, encode_attrs, parse_subnet_key
from flannel.testing.conformance import BackendConformance

NETWORK = IPv4Network("10.244.0.0/16")
CLEARED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "FLANNEL_AWS_METADATA_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


def _explain(lab: Lab, name: str) -> str:
    """What a failure message needs: the host's view of the underlay, and its log."""
    net = lab.host(name).sh("ip -br addr; ip route; ip neigh", check=False)
    return f"{name}'s network:\n{net}\n{name}'s log:\n{lab.logs(name)[-3000:]}"


class TestAwsVpcConformance(BackendConformance):
    backend = "aws-vpc"
    lease_backend_type = ""  # as flanneld: aws-vpc leases carry no BackendType
    backend_options = {"MetadataEndpoint": IMDS_URL, "EC2Endpoint": EC2_URL}
    data_path = False
    check_routes = False

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

    # -- cloud state --------------------------------------------------------------------

    def _routes(self) -> dict[str, list[dict[str, Any]]]:
        """Destination CIDR inside the Network -> its routes, over every route table."""
        assert self.fakes is not None
        found: dict[str, list[dict[str, Any]]] = {}
        for table in self.fakes.status()["route_tables"]:
            for route in table.get("Routes", []):
                cidr = route.get("DestinationCidrBlock")
                if cidr and IPv4Network(cidr).subnet_of(NETWORK):
                    found.setdefault(cidr, []).append(route)
        return found

    def _subnet(self, lab: Lab, name: str) -> str:
        found = self._lease_of(lab, name)
        assert found is not None, f"{name} has no lease in etcd"
        subnet, _ = parse_subnet_key(found[0].rsplit("/", 1)[-1])
        return str(subnet)

    def _eni(self, lab: Lab, name: str) -> str:
        return self.instances[lab.host(name).address]["eni_id"]

    def _routed_to(self, routes: dict[str, list[dict[str, Any]]], eni: str) -> set[str]:
        return {
            cidr
            for cidr, entries in routes.items()
            for r in entries
            if r.get("NetworkInterfaceId") == eni and r.get("State") == "active"
        }

    # -- aws-vpc checks, after the shared suite -----------------------------------------

    def test_each_host_routes_its_subnet_to_its_own_eni(self, lab: Lab) -> None:
        """Each host's lease subnet, and only it, is routed to the host's own ENI."""

        def wrong() -> list[str]:
            routes = self._routes()
            problems = []
            for name in lab.hosts:
                subnet = self._subnet(lab, name)
                carried = self._routed_to(routes, self._eni(lab, name))
                if carried != {subnet}:
                    problems.append(f"{name} (lease {subnet}) is the target of {carried}")
                if len(routes.get(subnet, [])) != 1:
                    problems.append(f"{subnet} has routes {routes.get(subnet)}")
            return problems

        deadline = time.monotonic() + 30
        while problems := wrong():
            if time.monotonic() > deadline:
                logs = "\n".join(_explain(lab, n) for n in lab.hosts)
                raise AssertionError(
                    f"after 30 s: {'; '.join(problems)}; VPC routes: {self._routes()}\n{logs}"
                )
            time.sleep(0.3)

    def test_sigterm_keeps_the_route(self, lab: Lab) -> None:
        name = lab.hosts[0]  # the suite stopped its daemon with SIGTERM (plain shutdown)
        assert not lab.host(name).daemon_running()
        subnet = self._subnet(lab, name)
        assert self._routed_to(self._routes(), self._eni(lab, name)) == {subnet}

    def test_lease_taken_moves_the_route(self, lab: Lab) -> None:
        """Another host takes our subnet: the daemon leases a new one and the route follows."""
        name = lab.hosts[1]
        found = self._lease_of(lab, name)
        assert found is not None
        old = self._subnet(lab, name)
        thief = LeaseAttrs(public_ip=IPv4Address("198.18.0.250"), backend_type="")
        lab.etcdctl("put", found[0], encode_attrs(thief).decode())
        try:
            try:
                _wait_for(
                    lambda: (
                        (lease := self._lease_of(lab, name)) is not None and lease[0] != found[0]
                    ),
                    30,
                    f"{name} to lease a new subnet",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {_explain(lab, name)}") from None
            new = self._subnet(lab, name)
            eni = self._eni(lab, name)
            _wait_for(
                lambda: self._routed_to(self._routes(), eni) == {new},
                30,
                f"the VPC route of {name} to move from {old} to {new}",
            )
            assert lab.host(name).daemon_running(), f"{name} exited:\n{lab.logs(name)}"
        finally:
            lab.etcdctl("del", found[0])
