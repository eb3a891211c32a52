"""The conformance suite every backend runs against itself, through the real daemon.

Subclass :class:`BackendConformance` in a test module and set at least ``backend``::

    from flannel.testing.conformance import BackendConformance

    class TestMyBackendConformance(BackendConformance):
        backend = "mybackend"

pytest then runs, on one lab (a hub with etcd and ``hosts`` hosts running ``flannel run``
with your backend, each with a pod), in this order: leases published with the right
backend type and a sane subnet.env; pod-to-pod pings (``data_path``); an unchanged lease
re-delivered is harmless; a restarted daemon keeps its subnet and its peers' reachability;
a lease deleted in etcd is re-acquired in-process; a removed peer disappears from the
others; SIGTERM stops the daemon with exit 0 and nothing left running in its namespace.
Backends that need services in the hub (a cloud API fake) override ``prepare_lab`` /
``cleanup_lab``.

Needs root, iproute2, ping and etcd (Debian: etcd-server etcd-client).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, ip_network
from typing import Any, ClassVar

import pytest

from flannel.lab import Lab
from flannel.lease import LeaseAttrs, decode_attrs, encode_attrs, parse_subnet_key
from flannel.testing.netns import run_tag

__all__ = ["BackendConformance", "OwnRouteConformance"]


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class BackendConformance:
    """Mixin of conformance tests; configure with class attributes."""

    backend: ClassVar[str] = ""
    """The ``Backend.Type`` under test."""
    lease_backend_type: ClassVar[str | None] = None
    """``BackendType`` expected in the lease value (default: ``backend``; udp writes "")."""
    backend_options: ClassVar[dict[str, Any]] = {}
    """Extra keys for the config's ``Backend`` object."""
    data_path: ClassVar[bool] = True
    """Whether pods on different hosts must reach each other."""
    check_routes: ClassVar[bool] = True
    """Whether every host must hold a route to every other host's subnet."""
    hosts: ClassVar[int] = 3
    network: ClassVar[str] = "10.244.0.0/16"
    daemon_args: ClassVar[tuple[str, ...]] = ()
    ready_timeout: ClassVar[float] = 90.0

    # -- fixtures -----------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def lab(cls) -> Iterator[Lab]:
        self = cls()  # one instance for the hooks; the lab is shared by the whole class
        if os.geteuid() != 0:
            pytest.skip("the conformance suite needs root (network namespaces)")
        for tool in ("ip", "ping", "etcd", "etcdctl"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} not installed: the conformance suite needs it")
        if not self.backend:
            pytest.fail('set `backend = "<type>"` on your BackendConformance subclass')
        config = {
            "Network": self.network,
            "Backend": {"Type": self.backend, **self.backend_options},
        }
        lab = Lab(
            name=f"cf-{self.backend}"[:12],
            hosts=self.hosts,
            backend=self.backend,
            network=self.network,
            config=config,
            tag=run_tag(),
            daemon_args=self.daemon_args,
            before_hosts=self.prepare_lab,
        )
        try:
            lab.up()
            lab.wait_ready(timeout=self.ready_timeout, routes=self.check_routes)
            yield lab
        finally:
            try:
                self.cleanup_lab(lab)
            finally:
                lab.down()

    def prepare_lab(self, lab: Lab) -> None:
        """Hook: runs in ``lab.up()`` once the hub (``lab.state.hub``, 198.18.0.1) and etcd
        exist, before any host or daemon; start what the daemons need there (a cloud API
        fake). Undo it in :meth:`cleanup_lab`."""

    def cleanup_lab(self, lab: Lab) -> None:
        """Hook: runs at teardown, also after a failure, before the lab is taken down."""

    # -- helpers ------------------------------------------------------------------------

    def _leases(self, lab: Lab) -> dict[str, bytes]:
        """Lease key -> value, read with etcdctl in the hub."""
        out = lab.etcdctl("get", "--prefix", f"{lab.state.etcd_prefix}/subnets/", "-w", "json")
        doc = json.loads(out or "{}")
        import base64

        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in doc.get("kvs", [])
        }

    def _lease_of(self, lab: Lab, host: str) -> tuple[str, bytes] | None:
        address = lab.host(host).address
        for key, value in self._leases(lab).items():
            if str(decode_attrs(value).public_ip) == address:
                return key, value
        return None

    def _assert_full_matrix(self, lab: Lab, hosts: list[str] | None = None) -> None:
        names = hosts or lab.hosts
        failed = [(a, b) for a in names for b in names if a != b and not lab.ping(a, b)]
        assert not failed, f"pod-to-pod pings failed for {failed}"

    # -- the suite (pytest runs methods in definition order) -----------------------------

    def test_leases_published(self, lab: Lab) -> None:
        expected = self.backend if self.lease_backend_type is None else self.lease_backend_type
        network = ip_network(self.network)
        for name in lab.hosts:
            found = self._lease_of(lab, name)
            assert found is not None, f"{name} has no lease with its public IP in etcd"
            attrs = decode_attrs(found[1])
            assert attrs.backend_type == expected, f"{name}: BackendType {attrs.backend_type!r}"
            env = lab.host(name).subnet_env() or {}
            subnet = ip_network(env["FLANNEL_SUBNET"], strict=False)
            in_network = subnet.subnet_of(network)  # type: ignore[arg-type]
            assert in_network, f"{name}: FLANNEL_SUBNET {subnet} not in {network}"
            mtu = int(env["FLANNEL_MTU"])
            assert 576 <= mtu <= 1500, f"{name}: FLANNEL_MTU {mtu}"
            assert env["FLANNEL_NETWORK"] == self.network

    def test_pod_to_pod(self, lab: Lab) -> None:
        if not self.data_path:
            pytest.skip(f"{self.backend} has no data path")
        self._assert_full_matrix(lab)

    def test_same_lease_redelivered_is_harmless(self, lab: Lab) -> None:
        target = lab.hosts[1]
        found = self._lease_of(lab, target)
        assert found is not None
        lab.etcdctl("put", found[0], "--ignore-value", "--ignore-lease")
        time.sleep(1.0)  # let the watch deliver the re-put to every host
        for name in lab.hosts:
            assert lab.host(name).daemon_running(), f"daemon on {name} died:\n{lab.logs(name)}"
            assert "Traceback" not in lab.logs(name), f"{name} logged a traceback"
        if self.data_path:
            self._assert_full_matrix(lab)

    def test_restart_keeps_subnet(self, lab: Lab) -> None:
        name = lab.hosts[0]
        before = lab.host(name).subnet
        lab.restart_daemon(name)
        _wait_for(lambda: lab.host(name).daemon_running(), 10, f"{name} to start")
        lab.wait_ready(timeout=self.ready_timeout, routes=self.check_routes)
        assert lab.host(name).subnet == before
        if self.data_path:
            # a userspace data path (udp) is down while its daemon restarts: wait for it
            _wait_for(
                lambda: all(
                    lab.ping(name, o) and lab.ping(o, name) for o in lab.hosts if o != name
                ),
                self.ready_timeout,
                f"pods to reach {name} again after its restart",
            )
            self._assert_full_matrix(lab)

    def test_lease_lost_is_reacquired(self, lab: Lab) -> None:
        name = lab.hosts[1]
        found = self._lease_of(lab, name)
        assert found is not None
        lab.etcdctl("del", found[0])
        _wait_for(lambda: self._lease_of(lab, name) is not None, 30, f"{name} to re-acquire")
        assert lab.host(name).daemon_running(), f"daemon on {name} exited:\n{lab.logs(name)}"
        lab.wait_ready(timeout=self.ready_timeout, routes=self.check_routes)
        if self.data_path:
            _wait_for(
                lambda: all(lab.ping(a, name) for a in lab.hosts if a != name),
                self.ready_timeout,
                f"pods to reach {name} after it re-acquired its lease",
            )

    def test_removed_peer_disappears(self, lab: Lab) -> None:
        gone = lab.hosts[-1]
        subnet = lab.host(gone).subnet
        assert subnet is not None
        lab.remove_host(gone, delete_lease=True)
        if self.check_routes:
            _wait_for(
                lambda: all(not lab.host(n).routes_to([subnet]) for n in lab.hosts),
                30,
                f"every host to drop its route to {subnet}",
            )
        if self.data_path:
            self._assert_full_matrix(lab)

    def test_sigterm_stops_cleanly(self, lab: Lab) -> None:
        name = lab.hosts[0]
        record = lab.host(name).state.daemon
        assert record is not None
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        status: int | None = None
        while time.monotonic() < deadline:
            try:
                pid, raw = os.waitpid(record.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                status = os.waitstatus_to_exitcode(raw)
                break
            time.sleep(0.05)
        assert status == 0, f"{name}: exit status {status} after SIGTERM:\n{lab.logs(name)}"
        left = subprocess.run(
            ["ip", "netns", "pids", lab.host(name).netns], capture_output=True, text=True
        ).stdout.split()
        assert not left, f"processes left in {name}'s namespace after SIGTERM: {left}"
        lab.stop_daemon(name)  # forget the record


class OwnRouteConformance(BackendConformance):
    """The suite for backends whose routes live outside the host (cloud route tables), plus
    three checks on those routes. Implement :meth:`cloud_routes` and :meth:`target_of`."""

    lease_backend_type: ClassVar[str | None] = ""  # as flanneld: cloud leases carry no type
    data_path: ClassVar[bool] = False  # the fakes carry no packets
    check_routes: ClassVar[bool] = False  # no kernel routes: the cloud routes
    route_wait: ClassVar[float] = 30.0

    def cloud_routes(self) -> dict[str, list[dict[str, Any]]]:
        """Destination CIDR inside the network -> the cloud's routes for it (raw dicts)."""
        raise NotImplementedError

    def route_target(self, route: dict[str, Any]) -> str | None:
        """Where a raw route points (None when it is not active)."""
        raise NotImplementedError

    def target_of(self, lab: Lab, name: str) -> str:
        """The instance/ENI a host's subnet must be routed to."""
        raise NotImplementedError

    def route_problem(self, subnet: str, routes: list[dict[str, Any]]) -> str | None:
        """Extra per-subnet check (e.g. the route's name); None when fine."""
        return None

    # -- helpers ------------------------------------------------------------------------

    def _subnet(self, lab: Lab, name: str) -> str:
        found = self._lease_of(lab, name)
        assert found is not None, f"{name} has no lease in etcd"
        subnet, _ = parse_subnet_key(found[0].rsplit("/", 1)[-1])
        return str(subnet)

    def _routed_to(self, target: str) -> set[str]:
        return {
            cidr
            for cidr, entries in self.cloud_routes().items()
            for route in entries
            if self.route_target(route) == target
        }

    @staticmethod
    def _explain(lab: Lab, name: str) -> str:
        net = lab.host(name).sh("ip -br addr; ip route; ip neigh", check=False)
        return f"{name}'s network:\n{net}\n{name}'s log:\n{lab.logs(name)[-3000:]}"

    # -- checks after the shared suite ----------------------------------------------------

    def test_each_host_routes_its_subnet_to_itself(self, lab: Lab) -> None:
        """Each host's lease subnet, and only it, is routed to the host's own target."""

        def problems() -> list[str]:
            routes = self.cloud_routes()
            found = []
            for name in lab.hosts:
                subnet = self._subnet(lab, name)
                carried = self._routed_to(self.target_of(lab, name))
                if carried != {subnet}:
                    found.append(f"{name} (lease {subnet}) is the target of {carried}")
                if len(routes.get(subnet, [])) != 1:
                    found.append(f"{subnet} has routes {routes.get(subnet)}")
                elif (extra := self.route_problem(subnet, routes[subnet])) is not None:
                    found.append(extra)
            return found

        deadline = time.monotonic() + self.route_wait
        while wrong := problems():
            if time.monotonic() > deadline:
                logs = "\n".join(self._explain(lab, n) for n in lab.hosts)
                raise AssertionError(
                    f"after {self.route_wait} s: {'; '.join(wrong)}; "
                    f"routes: {self.cloud_routes()}\n{logs}"
                )
            time.sleep(0.3)

    def test_sigterm_keeps_the_route(self, lab: Lab) -> None:
        name = lab.hosts[0]  # the suite stopped its daemon with SIGTERM (plain shutdown)
        assert not lab.host(name).daemon_running()
        assert self._routed_to(self.target_of(lab, name)) == {self._subnet(lab, name)}

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
                    self.route_wait,
                    f"{name} to lease a new subnet",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {self._explain(lab, name)}") from None
            new = self._subnet(lab, name)
            target = self.target_of(lab, name)
            _wait_for(
                lambda: self._routed_to(target) == {new},
                self.route_wait,
                f"the route of {name} to move from {old} to {new}",
            )
            assert lab.host(name).daemon_running(), f"{name} exited:\n{lab.logs(name)}"
        finally:
            lab.etcdctl("del", found[0])
