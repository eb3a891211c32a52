"""Netlink helpers shared by backends: :mod:`flannel.netlink.routes` (route reconcile).

Import the submodules directly; this package imports nothing so the daemon stays lean.
"""
