"""GCE stand-ins for the namespace lab: the fake Compute API and metadata, served from the hub.

Run in the hub namespace (``ip netns exec <hub> python gce_hub_fakes.py --ready FILE --hosts
198.18.0.11,...``): it binds only to the hub address and serves :class:`gce_fakes.FakeCompute`
and one :class:`gce_fakes.FakeMetadata` per lab host, picked by the requester's source
address, so each lab host is one instance. ``GET /lab/status`` on the metadata port gives the
instances and every route as JSON. :class:`HubProcess` starts and stops it (by PID) from the
test process.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flannel.testing.hub import HubProcess

sys.path.insert(0, str(Path(__file__).parent))

from gce_fakes import FakeCompute, FakeMetadata, Reply

HUB_ADDR = "198.18.0.1"
COMPUTE_PORT = 8774
METADATA_PORT = 8775
COMPUTE_URL = f"http://{HUB_ADDR}:{COMPUTE_PORT}/compute/v1"
METADATA_URL = f"http://{HUB_ADDR}:{METADATA_PORT}/computeMetadata/v1"
ZONE = "europe-west1-b"
NETWORK = "default"

Handle = Callable[[str, str, dict[str, str], bytes, str], Reply]


def serve(port: int, handle: Handle) -> ThreadingHTTPServer:
    """A threaded HTTP server on the hub address; ``handle`` also gets the client address."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, data = handle(
                self.command, self.path, headers, body, self.client_address[0]
            )
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

    return ThreadingHTTPServer((HUB_ADDR, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready", type=Path, required=True, help="file written once serving")
    parser.add_argument("--hosts", required=True, help="comma-separated host addresses")
    args = parser.parse_args()
    compute = FakeCompute()
    compute.close()  # its own 127.0.0.1 listener: we serve compute.handle on the hub address
    compute.add_network(NETWORK)
    metadata: dict[str, FakeMetadata] = {}
    instances: dict[str, dict[str, str]] = {}
    for n, address in enumerate(args.hosts.split(","), start=1):
        name = f"node-{n}"
        doc = compute.add_instance(ZONE, name)
        metadata[address] = FakeMetadata(compute, ZONE, name, NETWORK)
        metadata[address].close()  # likewise: only the hub-address listener below serves
        instances[address] = {"name": name, "link": doc["selfLink"]}

    def handle_metadata(
        method: str, path: str, headers: dict[str, str], body: bytes, client: str
    ) -> Reply:
        if path == "/lab/status":
            with compute._lock:
                doc = {"instances": instances, "routes": dict(compute.routes)}
            return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()
        fake = metadata.get(client)
        if fake is None:
            return 404, {"Metadata-Flavor": "Google"}, f"no lab instance at {client}".encode()
        return fake.handle(method, path, headers, body)

    servers = [
        serve(COMPUTE_PORT, lambda m, p, h, b, _: compute.handle(m, p, h, b)),
        serve(METADATA_PORT, handle_metadata),
    ]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}) for s in servers
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for thread in threads:
        thread.start()
    args.ready.write_text(json.dumps(instances))
    while not stop.wait(0.5):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join()


class GceHubFakes(HubProcess):
    """This script in a lab's hub namespace; ``start()`` returns address -> instance
    name and selfLink."""

    def __init__(self, hub: str, workdir: Path, addresses: list[str]) -> None:
        super().__init__(
            hub, workdir, __file__, ["--hosts", ",".join(addresses)], label="gce-fakes"
        )

    def status(self) -> dict[str, Any]:
        """``GET /lab/status`` (read from inside the hub)."""
        doc: dict[str, Any] = self.get_json(f"http://{HUB_ADDR}:{METADATA_PORT}/lab/status")
        return doc


if __name__ == "__main__":
    main()
