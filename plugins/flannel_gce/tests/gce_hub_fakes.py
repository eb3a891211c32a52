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
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


_GET_JSON = (
    "import sys, urllib.request\n"
    "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
    "sys.stdout.write(opener.open(sys.argv[1], timeout=20).read().decode())\n"
)


class HubProcess:
    """This script running in a lab's hub namespace; started and stopped by PID."""

    def __init__(self, hub: str, workdir: Path, args: list[str]) -> None:
        self.hub = hub
        self.ready = workdir / "gce-fakes.ready"
        self.log = workdir / "gce-fakes.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> dict[str, dict[str, str]]:
        """Start it and wait until it serves; returns address -> instance name, selfLink."""
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        argv = ["ip", "netns", "exec", self.hub, sys.executable, __file__,
                "--ready", str(self.ready), *self.args]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the GCE fakes did not start in {self.hub}:\n{tail}")
            time.sleep(0.1)
        instances: dict[str, dict[str, str]] = json.loads(self.ready.read_text())
        return instances

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def status(self) -> dict[str, Any]:
        """``GET /lab/status``, fetched from inside the hub (the test process is outside)."""
        url = f"http://{HUB_ADDR}:{METADATA_PORT}/lab/status"
        done = subprocess.run(
            ["ip", "netns", "exec", self.hub, sys.executable, "-c", _GET_JSON, url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"GET {url} failed: {done.stderr.strip()}")
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc


if __name__ == "__main__":
    main()
