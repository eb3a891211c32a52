"""The built-in alloc backend runs the conformance suite too: lease only, no data path."""

from flannel.testing.conformance import BackendConformance


class TestAllocConformance(BackendConformance):
    backend = "alloc"
    lease_backend_type = ""
    data_path = False
    check_routes = False
    hosts = 2
