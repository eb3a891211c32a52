"""Loopback stand-ins for AWS: a fake instance metadata service and a counting moto server."""

from __future__ import annotations

import io
import logging
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.server import ThreadedMotoServer

CLEARED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "FLANNEL_AWS_METADATA_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)
"""Environment that could point boto3 or flannel at a real AWS (or through a proxy)."""


class FakeImds:
    """The EC2 instance metadata service of one instance, on 127.0.0.1.

    ``mode``: "v2" (token offered, GETs work with or without it), "v2-required" (GETs
    without a valid token get 401), "v1" (the token PUT is refused with 403) or "hop-limit"
    (IMDSv2 required but no token reaches us, as in a container beyond the hop limit).
    """

    TOKEN = "fake-imds-token"

    def __init__(self, instance_id: str, region: str = "us-east-1", mode: str = "v2") -> None:
        self.instance_id = instance_id
        self.region = region
        self.mode = mode
        self.requests: list[tuple[str, str, bool]] = []  # method, path, had token
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                fake.requests.append(("PUT", self.path, False))
                if self.path != "/latest/api/token" or fake.mode in ("v1", "hop-limit"):
                    self._reply(403, "Forbidden")
                elif not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400, "Missing TTL")
                else:
                    self._reply(200, FakeImds.TOKEN)

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token") == FakeImds.TOKEN
                fake.requests.append(("GET", self.path, token))
                if fake.mode in ("v2-required", "hop-limit") and not token:
                    self._reply(401, "Unauthorized")
                    return
                answers = {
                    "/latest/meta-data/instance-id": fake.instance_id,
                    "/latest/meta-data/placement/region": fake.region,
                    "/latest/meta-data/placement/availability-zone": fake.region + "a",
                }
                if self.path in answers:
                    self._reply(200, answers[self.path])
                else:
                    self._reply(404, "Not Found")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeImds:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


class CountingMotoServer(ThreadedMotoServer):
    """moto's EC2 server on 127.0.0.1 that records the Action of every request it serves."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.actions: list[str] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        super().start()
        assert self._server is not None
        self._server.app = self._counting(self._server.app)  # type: ignore[method-assign]
        host, port = self.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def _counting(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            form = urllib.parse.parse_qs(body.decode(errors="replace"))
            action = (form.get("Action") or query.get("Action") or [""])[0]
            if action:
                with self._lock:
                    self.actions.append(action)
            return app(environ, start_response)

        return wrapped

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.actions)

    def clear(self) -> None:
        with self._lock:
            self.actions.clear()

    def reset(self) -> None:
        """Forget every VPC, instance and route (moto's state is per process)."""
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            response.read()
        self.clear()


WRITES = {
    "CreateRoute",
    "ReplaceRoute",
    "DeleteRoute",
    "ModifyNetworkInterfaceAttribute",
    "ModifyInstanceAttribute",
}


def writes(counts: Counter[str]) -> dict[str, int]:
    """The mutating EC2 actions in a request count."""
    return {action: n for action, n in counts.items() if action in WRITES}
