"""vxlan runs the backend conformance suite against itself, through the real daemon."""

from flannel.testing.conformance import BackendConformance


class TestVXLANConformance(BackendConformance):
    backend = "vxlan"
