"""flannel for Python: every host gets a subnet of one network, and every subnet is reachable.

The public API for backend authors lives in :mod:`flannel.backend` (what a backend gets and
returns), :mod:`flannel.hookspecs` (the hooks it implements), :mod:`flannel.lease` and
:mod:`flannel.events` (what it is told about peers) and :mod:`flannel.netlink` (shared
kernel programming helpers).
"""

__version__ = "0.1.0"
