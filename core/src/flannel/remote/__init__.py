"""Client/server mode (flanneld 0.7.1's ``--listen`` / ``--remote``).

One host runs ``flannel run --listen ADDR:PORT``: it holds the etcd connection and serves the
subnet-manager HTTP API (:mod:`flannel.remote.server`). Other hosts run ``flannel run --remote
ADDR:PORT`` and use :class:`flannel.remote.client.RemoteSubnetManager` instead of etcd. The
routes and JSON shapes follow flanneld 0.7.1 (docs/remote-api.md).
"""
