"""udp runs the backend conformance suite against itself, through the real daemon.

udp leases carry no BackendType (as flanneld's), and its one route covers the whole network,
so per-peer route checks do not apply; pings do.
"""

from flannel.testing.conformance import BackendConformance


class TestUDPConformance(BackendConformance):
    backend = "udp"
    lease_backend_type = ""
    check_routes = False
