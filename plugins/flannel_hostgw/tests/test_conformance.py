"""host-gw runs the backend conformance suite against itself, through the real daemon."""

from flannel.testing.conformance import BackendConformance


class TestHostGWConformance(BackendConformance):
    backend = "host-gw"
