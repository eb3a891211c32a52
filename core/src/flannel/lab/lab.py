"""The lab: a real multi-host flannel fabric on one machine, built from network namespaces."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from flannel.lab import topology
from flannel.lab.host import HostStatus, LabHost
from flannel.lab.state import HostState, LabState, state_root
from flannel.lab.system import (
    LabError,
    netns_add,
    netns_delete,
    netns_exists,
    ns_run,
    proc_alive,
    proc_record,
    stop_proc,
)

__all__ = ["HostStatus", "Lab", "LabHost", "down_prefix"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Lab:
    """A flannel fabric in namespaces: hub (bridge + etcd), hosts running ``flannel run``,
    a pod per host. Use as a context manager, or ``up()``/``down()``.

    ``tag`` (tests: ``flannel.testing.netns.run_tag()``) makes names ``fl<tag>-<name>-*``;
    without it names are ``flannel-lab-<name>-*`` (the CLI's fixed names).
    """

    def __init__(
        self,
        name: str = "lab",
        hosts: int = 3,
        backend: str = "host-gw",
        network: str = "10.244.0.0/16",
        config: Mapping[str, Any] | str | None = None,
        segments: int = 1,
        *,
        ipv6: bool = False,
        ipv6_network: str = "fd00:10:244::/56",
        tag: str | None = None,
        etcd_prefix: str = "/coreos.com/network",
        daemon_args: Iterable[str] = (),
        progress: Progress | None = None,
        server: bool = False,
        server_args: Iterable[str] = (),
        networks: Mapping[str, Mapping[str, Any] | str] | None = None,
        before_hosts: Callable[[Lab], None] | None = None,
    ) -> None:
        if not 1 <= segments <= 4:
            raise LabError(f"segments must be 1..4, got {segments}")
        if not 0 <= hosts <= topology.MAX_HOSTS:
            raise LabError(f"hosts must be 0..{topology.MAX_HOSTS}, got {hosts}")
        prefix = f"fl{tag}-{name}" if tag else f"flannel-lab-{name}"
        self.initial_hosts = hosts
        self.progress = progress or _quiet
        self.state = LabState(
            name=name,
            prefix=prefix,
            backend=backend,
            config=_network_config(config, network, backend, ipv6, ipv6_network),
            segments=segments,
            ipv6=ipv6,
            etcd_prefix=etcd_prefix.rstrip("/") or "/",
            daemon_args=list(daemon_args),
            hub=f"{prefix}-hub",
            router=f"{prefix}-router" if segments > 1 else None,
            server=server,
            server_args=list(server_args),
            networks={
                name: _network_config(cfg, network, backend, ipv6, ipv6_network)
                for name, cfg in (networks or {}).items()
            },
        )
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._made = False
        self._before_hosts = before_hosts
        """Called by ``up()`` once hub, etcd and config exist, before any host: start
        services the daemons need in the hub (e.g. a cloud API fake)."""

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, name: str, tag: str | None = None) -> Lab:
        """The lab recorded under ``name`` (as made by ``up``), for status/down/..."""
        prefix = f"fl{tag}-{name}" if tag else f"flannel-lab-{name}"
        path = state_root() / prefix / "state.json"
        if not path.exists():
            raise LabError(f"no lab named {name!r} (no {path}): start one with `flannel lab up`")
        lab = cls.__new__(cls)
        lab.state = LabState.load(path)
        lab.initial_hosts = len(lab.state.hosts)
        lab.progress = _quiet
        lab._procs = {}
        lab._made = True
        lab._before_hosts = None
        return lab

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def dir(self) -> Path:
        return state_root() / self.state.prefix

    @property
    def hosts(self) -> list[str]:
        return list(self.state.hosts)

    def host(self, name: str) -> LabHost:
        try:
            return LabHost(self, self.state.hosts[name])
        except KeyError:
            raise LabError(
                f"no host {name!r} in lab {self.name!r}: hosts are {', '.join(self.hosts)}"
            ) from None

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{topology.HUB_ADDR}:2379"

    # -- up / down ----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            return self.up()
        except BaseException:
            if self._made:
                self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        """Build hub, etcd, router and hosts, and start every daemon (does not wait)."""
        _preflight()
        if self.state.path.exists():
            raise LabError(
                f"lab {self.name!r} already exists ({self.state.path}): run `flannel lab down"
                f" --name {self.name}` first"
            )
        st = self.state
        self._made = True
        self.dir.mkdir(parents=True, exist_ok=True)
        st.namespaces.append(st.hub)
        st.save()
        self.progress(f"hub namespace {st.hub}")
        topology.make_hub(st.hub, st.segments, st.ipv6)
        if st.router is not None:
            st.namespaces.append(st.router)
            st.save()
            self.progress(f"router namespace {st.router} joining {st.segments} segments")
            topology.make_router(st.hub, st.router, st.segments, st.ipv6)
        self.progress("etcd in the hub")
        self._start_etcd()
        self.progress("network config")
        if st.networks:
            for net, cfg in st.networks.items():
                self.set_network_config(net, cfg)
        else:
            self.etcdctl("put", f"{st.etcd_prefix}/config", json.dumps(st.config))
        if st.server:
            self.progress("subnet-manager server (--listen) in the hub")
            self.start_server()
        if self._before_hosts is not None:
            self._before_hosts(self)
        names = [self._make_host() for _ in range(self.initial_hosts)]
        self.progress(f"starting {len(names)} daemons")
        for name in names:
            self.start_daemon(name)
        return self

    def down(self) -> None:
        """Stop every process and delete every namespace the state file records."""
        down_prefix(self.state.prefix, self.state)
        self._procs.clear()

    def _start_etcd(self) -> None:
        from flannel.testing.etcd import EtcdNotInstalled, EtcdServer

        data_dir = self.dir / "etcd"
        data_dir.mkdir(parents=True, exist_ok=True)
        server = EtcdServer(host=topology.HUB_ADDR, netns=self.state.hub, data_dir=data_dir)
        try:
            server.start()
        except (EtcdNotInstalled, RuntimeError) as exc:
            raise LabError(f"etcd did not start in {self.state.hub}: {exc}") from None
        assert server.proc is not None
        self.state.etcd = proc_record(server.proc.pid, ["etcd"])
        self.state.save()

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` (v3 API) in the hub against the lab's etcd; return stdout."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.state.hub, "etcdctl", "--endpoints",
             self.etcd_endpoint, *args],
            text=True, capture_output=True, env=dict(os.environ, ETCDCTL_API="3"),
        )  # fmt: skip
        if done.returncode != 0:
            raise LabError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    # -- hosts --------------------------------------------------------------------------

    def _make_host(self, segment: int | None = None) -> str:
        st = self.state
        index = st.next_index
        st.next_index += 1
        name = f"h{index}"
        seg = (index - 1) % st.segments if segment is None else segment
        if not 0 <= seg < st.segments:
            raise LabError(f"segment must be 0..{st.segments - 1}, got {seg}")
        netns = f"{st.prefix}-{name}"
        addr, addr6 = topology.host_addresses(index, seg)
        host = HostState(name, index, netns, f"{netns}-pod", seg, addr,
                         addr6 if st.ipv6 else None, f"vh{index}")  # fmt: skip
        st.hosts[name] = host
        net_pods = [f"{netns}-{net}" for net in st.networks]
        st.namespaces += [netns, host.pod_netns, *net_pods]
        st.save()
        self.progress(f"host {name}: {addr} on segment {seg}")
        topology.make_host(st.hub, netns, index, seg, st.segments, st.ipv6)
        for ns in [host.pod_netns, *net_pods]:
            netns_add(ns)
        (self.dir / name).mkdir(exist_ok=True)
        return name

    def add_host(
        self, segment: int | None = None, start: bool = True, args: Iterable[str] = ()
    ) -> str:
        """Add a host (next free index) and start its daemon; ``wait_ready`` to wait.
        ``args`` are extra ``flannel run`` arguments for this host only."""
        name = self._make_host(segment)
        self.state.hosts[name].args = list(args)
        self.state.save()
        if start:
            self.start_daemon(name)
        return name

    def remove_host(self, name: str, delete_lease: bool = True) -> None:
        """Stop the host's daemon, optionally delete its lease, delete its namespaces."""
        host = self.host(name)
        self.stop_daemon(name)
        subnet = host.subnet
        if delete_lease and subnet is not None:
            net = ip_network(subnet)
            key = f"{self.state.etcd_prefix}/subnets/{net.network_address}-{net.prefixlen}"
            self.etcdctl("del", "--prefix", key)
        for ns in (*(host.pod_netns_of(n) for n in self.state.networks), host.pod_netns,
                   host.netns):  # fmt: skip
            netns_delete(ns)
            if ns in self.state.namespaces:
                self.state.namespaces.remove(ns)
        del self.state.hosts[name]
        self.state.save()

    def daemon_argv(self, name: str) -> list[str]:
        host = self.host(name)
        st = self.state
        if st.server:
            store = ["--remote", self.server_address]
        else:
            store = ["--etcd-endpoints", self.etcd_endpoint, "--etcd-prefix", st.etcd_prefix]
        if st.networks:
            store += ["--subnet-dir", str(host.subnet_dir)]
        return [
            "ip", "netns", "exec", host.netns, sys.executable, "-m", "flannel", "run",
            *store, "--iface", "eth0", "--subnet-file", str(host.subnet_file),
            *st.daemon_args, *host.state.args,
        ]  # fmt: skip

    # -- the --listen server (client/server labs) ---------------------------------------

    @property
    def server_address(self) -> str:
        return f"{topology.HUB_ADDR}:{topology.SERVER_PORT}"

    @property
    def server_log_file(self) -> Path:
        return self.dir / "server.log"

    def server_argv(self) -> list[str]:
        st = self.state
        return [
            "ip", "netns", "exec", st.hub, sys.executable, "-m", "flannel", "run",
            "--listen", self.server_address, "--etcd-endpoints", self.etcd_endpoint,
            "--etcd-prefix", st.etcd_prefix, *st.server_args,
        ]  # fmt: skip

    def start_server(self) -> None:
        """Start the hub's ``flannel run --listen`` and wait until it accepts connections."""
        if proc_alive(self.state.server_proc):
            return
        argv = self.server_argv()
        with open(self.server_log_file, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._procs["@server"] = proc
        self.state.server_proc = proc_record(proc.pid, argv)
        self.state.save()
        deadline = time.monotonic() + 30
        while not _listening(self.state.hub, topology.SERVER_PORT):
            if proc.poll() is not None:
                raise LabError(f"the --listen server exited:\n{_tail(self.server_logs())}")
            if time.monotonic() > deadline:
                raise LabError(f"the --listen server is not listening after 30 s:\n"
                               f"{_tail(self.server_logs())}")  # fmt: skip
            time.sleep(0.1)

    def stop_server(self) -> None:
        stop_proc(self.state.server_proc)
        proc = self._procs.pop("@server", None)
        if proc is not None:
            proc.poll()
        self.state.server_proc = None
        self.state.save()

    def restart_server(self) -> None:
        self.stop_server()
        self.start_server()

    def server_logs(self) -> str:
        path = self.server_log_file
        return path.read_text(errors="replace") if path.exists() else ""

    # -- networks (multi-network labs) ----------------------------------------------------

    def set_network_config(self, network: str, config: Mapping[str, Any]) -> None:
        """Put ``<etcd_prefix>/<network>/config`` (adds the network under --watch-networks)."""
        self.state.networks[network] = dict(config)
        self.state.save()
        self.etcdctl("put", f"{self.state.etcd_prefix}/{network}/config", json.dumps(config))

    def delete_network_config(self, network: str) -> None:
        """Delete ``<etcd_prefix>/<network>/config`` (removes it under --watch-networks)."""
        self.etcdctl("del", f"{self.state.etcd_prefix}/{network}/config")

    def start_daemon(self, name: str) -> None:
        host = self.host(name)
        if host.daemon_running():
            return
        argv = self.daemon_argv(name)
        with open(host.log_file, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._procs[name] = proc
        host.state.daemon = proc_record(proc.pid, argv)
        self.state.save()

    def stop_daemon(self, name: str) -> None:
        host = self.host(name)
        stop_proc(host.state.daemon)
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.poll()
        host.state.daemon = None
        self.state.save()

    def restart_daemon(self, name: str) -> None:
        self.stop_daemon(name)
        self.start_daemon(name)

    def logs(self, name: str) -> str:
        path = self.host(name).log_file
        return path.read_text(errors="replace") if path.exists() else ""

    # -- readiness ----------------------------------------------------------------------

    def sync_pods(self) -> None:
        """Build (or rebuild) each host's pod once its subnet.env is there."""
        if self.state.networks:
            self._sync_network_pods()
            return
        for name in self.hosts:
            host = self.host(name)
            env = host.subnet_env()
            if not env or "FLANNEL_SUBNET" not in env:
                continue
            want = _pod_key(env)
            if host.state.pod_subnet == want:
                continue
            mtu = int(env.get("FLANNEL_MTU", "1500"))
            self.progress(f"pod on {name}: {env['FLANNEL_SUBNET']} mtu {mtu}")
            subnet6 = env.get("FLANNEL_IPV6_SUBNET") if self.state.ipv6 else None
            topology.make_pod(host.netns, host.pod_netns, env["FLANNEL_SUBNET"], mtu, subnet6)
            host.state.pod_subnet = want
            self.state.save()

    def _sync_network_pods(self) -> None:
        for name in self.hosts:
            host = self.host(name)
            for index, net in enumerate(sorted(self.state.networks)):
                env = host.subnet_env(net)
                if not env or "FLANNEL_SUBNET" not in env:
                    continue
                want = _pod_key(env)
                if host.state.net_pods.get(net) == want:
                    continue
                mtu = int(env.get("FLANNEL_MTU", "1500"))
                self.progress(f"{net} pod on {name}: {env['FLANNEL_SUBNET']} mtu {mtu}")
                topology.make_pod(host.netns, host.pod_netns_of(net), env["FLANNEL_SUBNET"],
                                  mtu, bridge=f"cni{index}", veth=f"vnet{index}")  # fmt: skip
                host.state.net_pods[net] = want
                self.state.save()

    def _networks_to_check(self, network: str | None) -> list[str | None]:
        if network is not None or not self.state.networks:
            return [network]
        return list(sorted(self.state.networks))

    def missing(self, routes: bool = True, network: str | None = None) -> list[str]:
        """What keeps the lab from being ready (empty when ready). Multi-network labs:
        ``network`` checks one network; None checks all."""
        problems = []
        for net in self._networks_to_check(network):
            problems += self._missing(routes, net)
        return problems

    def _missing(self, routes: bool, network: str | None) -> list[str]:
        problems = []
        subnets: dict[str, str] = {}
        label = f"{network}: " if network else ""
        for name in self.hosts:
            host = self.host(name)
            if not host.daemon_running():
                problems.append(f"{name}: daemon not running")
                continue
            env = host.subnet_env(network)
            sub = host.subnet_of(network)
            built = host.state.net_pods.get(network) if network else host.state.pod_subnet
            if env is None or sub is None:
                problems.append(f"{label}{name}: no subnet.env yet")
            elif built != _pod_key(env):
                problems.append(f"{label}{name}: pod not built yet")
            else:
                subnets[name] = sub
        if routes and not problems:
            v6 = {n: self.host(n).ipv6_subnet for n in subnets} if self.state.ipv6 else {}
            for name in subnets:
                others = {s for n, s in subnets.items() if n != name}
                lacking = others - self.host(name).routes_to(others)
                others6 = {s for n, s in v6.items() if n != name and s}
                lacking |= others6 - self.host(name).routes_to(others6, family=6)
                if lacking:
                    problems.append(f"{label}{name}: no route to {', '.join(sorted(lacking))}")
        return problems

    def wait_ready(
        self, timeout: float = 60.0, routes: bool = True, network: str | None = None
    ) -> None:
        """Wait until every daemon wrote subnet.env (pods built) and, with ``routes``,
        every host routes every other host's subnet. Raises :class:`LabError` (with the
        daemon's log tail) if a daemon dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            self.sync_pods()
            problems = self.missing(routes, network)
            if not problems:
                return
            for name in self.hosts:
                host = self.host(name)
                if host.state.daemon is not None and not host.daemon_running():
                    raise LabError(f"daemon on {name} exited:\n{_tail(self.logs(name))}")
            if time.monotonic() > deadline:
                raise LabError(f"lab {self.name!r} not ready after {timeout} s: "
                               + "; ".join(problems))  # fmt: skip
            time.sleep(0.1)

    # -- traffic ------------------------------------------------------------------------

    def ping(
        self, src: str, dst: str, family: int = 4, count: int = 2, network: str | None = None
    ) -> bool:
        """Ping ``dst``'s pod from ``src``'s pod (in ``network``, multi-network labs);
        True if any reply came back."""
        if network is not None:
            target = self.host(dst).pod_ip_of(network)
        else:
            target = self.host(dst).pod_ip6 if family == 6 else self.host(dst).pod_ip
        if target is None:
            return False
        done = ns_run(
            self.host(src).pod_netns_of(network),
            ["ping", f"-{family}", "-c", str(count), "-i", "0.2", "-W", "1", "-q", target],
            check=False,
        )
        return done.returncode == 0

    def ping_matrix(
        self,
        sample: int | None = None,
        family: int = 4,
        seed: int | None = None,
        network: str | None = None,
    ) -> dict[tuple[str, str], bool]:
        """Pod-to-pod pings for every ordered host pair (or ``sample`` random pairs)."""
        pairs = [(a, b) for a in self.hosts for b in self.hosts if a != b]
        if sample is not None and sample < len(pairs):
            pairs = random.Random(seed).sample(pairs, sample)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = pool.map(lambda p: self.ping(p[0], p[1], family, network=network), pairs)
            return dict(zip(pairs, results, strict=True))

    def status(self) -> list[HostStatus]:
        subnets = {n: self.host(n).subnet for n in self.hosts}
        rows = []
        for name in self.hosts:
            host = self.host(name)
            others = {s for n, s in subnets.items() if n != name and s}
            if host.daemon_running():
                daemon = "running"
            else:
                daemon = "stopped" if host.state.daemon is None else "exited"
            routed = len(host.routes_to(others)) if others else 0
            rows.append(HostStatus(name, host.address, host.state.segment, subnets[name],
                                   daemon, routed, len(others), host.pod_ip))  # fmt: skip
        return rows


def _listening(netns: str, port: int) -> bool:
    done = ns_run(netns, ["ss", "-Htln", f"sport = :{port}"], check=False)
    return bool(done.stdout.strip())


def _pod_key(env: Mapping[str, str]) -> str:
    return env.get("FLANNEL_SUBNET", "") + "|" + env.get("FLANNEL_IPV6_SUBNET", "")


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _network_config(
    config: Mapping[str, Any] | str | None,
    network: str,
    backend: str,
    ipv6: bool,
    ipv6_network: str,
) -> dict[str, Any]:
    if isinstance(config, str):
        try:
            loaded = json.loads(config)
        except ValueError as exc:
            raise LabError(f"--config is not JSON ({exc}): give a JSON object") from None
        if not isinstance(loaded, dict):
            raise LabError(f"--config must be a JSON object, got {config!r:.60}")
        config = loaded
    doc = dict(config or {})
    doc.setdefault("Network", network)
    backend_doc = dict(doc.get("Backend") or {})
    backend_doc.setdefault("Type", backend)
    doc["Backend"] = backend_doc
    if ipv6:
        doc.setdefault("EnableIPv6", True)
        doc.setdefault("IPv6Network", ipv6_network)
    return doc


def _preflight() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces): run it as root")
    for tool in ("ip", "ping", "etcdctl"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found on PATH: install iproute2, iputils-ping, etcd-client")
    if shutil.which("etcd") is None:
        raise LabError(
            "etcd binary not found on PATH: install it (Debian: apt-get install etcd-server)"
        )


def down_prefix(prefix: str, state: LabState | None = None) -> None:
    """Remove a lab's processes, namespaces and state dir, from its state file."""
    path = state_root() / prefix / "state.json"
    if state is None:
        if not path.exists():
            return
        state = LabState.load(path)
    for host in state.hosts.values():
        stop_proc(host.daemon)
    stop_proc(state.server_proc)
    stop_proc(state.etcd)
    for ns in reversed(state.namespaces):
        netns_delete(ns)
    leftovers = [ns for ns in state.namespaces if netns_exists(ns)]
    if leftovers:
        raise LabError(f"could not delete namespaces {leftovers}: check `ip netns pids`")
    shutil.rmtree(state_root() / prefix, ignore_errors=True)
