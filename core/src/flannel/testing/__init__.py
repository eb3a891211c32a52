"""Test helpers for flannel and for backend authors (etcd server, network namespaces).

Enable the fixtures in a test suite with ``pytest_plugins = ["flannel.testing.plugin"]``.
"""
