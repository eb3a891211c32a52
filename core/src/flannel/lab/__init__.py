"""flannel lab: a real multi-host flannel fabric on one machine, in network namespaces.

API summary (for every backend's multi-host tests; needs root, etcd, iproute2, ping)::

    from flannel.lab import Lab, LabError

    with Lab(name="vx", hosts=3, backend="vxlan", tag=run_tag()) as lab:  # up() ... down()
        lab.wait_ready(timeout=60)          # subnet.env everywhere, pods built, and every
                                            # host routes every other subnet (routes=False:
                                            # skip the route check, e.g. for udp/segments)
        assert all(lab.ping_matrix().values())      # pod-to-pod, all ordered pairs
        lab.ping("h1", "h2")                # one pair; family=6 for the IPv6 pods
        lab.ping_matrix(sample=20, seed=1)  # random subset of pairs
        h = lab.host("h1")                  # LabHost: netns, pod_netns, address, subnet,
        h.routes(); h.routes_to([...]); h.sh("ip -d link")  # pod_ip, subnet_env(), log_file
        name = lab.add_host()               # h4 (optionally segment=1); then wait_ready()
        lab.remove_host("h2", delete_lease=True)
        lab.restart_daemon("h1"); lab.stop_daemon("h1"); lab.start_daemon("h1")
        lab.logs("h1"); lab.status(); lab.etcdctl("get", "--prefix", "/coreos.com")
        lab.add_host(args=["--remote-certfile="])   # extra flags for one host

    # client/server: `flannel run --listen 198.18.0.1:8080` in the hub, hosts use --remote
    Lab(name="cs", server=True, server_args=[...TLS flags], daemon_args=[...])
    lab.stop_server(); lab.start_server(); lab.restart_server(); lab.server_logs()

    # several networks: configs at <prefix>/<name>/config, --subnet-dir per host, and a
    # pod per network per host (namespace <host netns>-<name>, bridge cni<i>)
    Lab(name="mn", networks={"blue": {...}, "red": {...}}, daemon_args=["--watch-networks"])
    lab.wait_ready(network="blue"); lab.ping_matrix(network="red"); lab.ping(a, b, network=n)
    h.subnet_env("blue"); h.subnet_of("blue"); h.pod_netns_of("blue"); h.env_file("blue")
    lab.set_network_config("red", {...}); lab.delete_network_config("red")

Constructor: ``Lab(name, hosts=3, backend="host-gw", network="10.244.0.0/16", config=None,
segments=1, *, ipv6=False, ipv6_network="fd00:10:244::/56", tag=None,
etcd_prefix="/coreos.com/network", daemon_args=(), progress=None, server=False,
server_args=(), networks=None, before_hosts=None)``; ``before_hosts(lab)`` runs in ``up()``
once hub and etcd exist, before any host (start services the daemons need in the hub).
``config`` (dict or JSON text) is the network config; ``Network`` and ``Backend.Type`` are
filled from ``network``/``backend`` when absent. ``daemon_args`` are appended to every
``flannel run``.

Layout: hub namespace ``<prefix>-hub`` with bridge ``br0`` (198.18.0.1/24, etcd on :2379);
hosts ``<prefix>-h<i>`` with ``eth0`` = 198.18.s.(10+i)/24 (IPv6 2001:db8:0:s::(10+i)/64),
forwarding on; pods ``<prefix>-h<i>-pod`` on ``cni0`` (FLANNEL_SUBNET .1, pod .2, MTU
FLANNEL_MTU). ``segments=2``: segment s is 198.18.s.0/24 on ``br<s>``, joined by
``<prefix>-router`` (198.18.s.254, the hosts' default route); host h<i> is on segment
(i-1) % segments. ``<prefix>`` is ``fl<tag>-<name>`` with a tag, else ``flannel-lab-<name>``.
State (namespaces, PIDs, logs, subnet.env files) lives in ``/run/flannel-lab/<prefix>/``
(``$FLANNEL_LAB_STATE`` overrides), so ``Lab.load(name).down()`` / ``flannel lab down``
clean up even after a crash. pytest: the ``lab_factory`` fixture in tests/conftest.py.
"""

from __future__ import annotations

from flannel.lab.lab import HostStatus, Lab, LabHost, down_prefix
from flannel.lab.system import LabError

__all__ = ["HostStatus", "Lab", "LabError", "LabHost", "down_prefix"]
