"""Loopback stand-ins for Google Cloud: a Compute v1 REST fake and a GCE metadata server.

The Compute fake covers what the gce backend calls: networks.get, instances.get,
routes.get/list/insert/delete and globalOperations.get. Like the real API, a mutation
happens when its operation finishes (here: on the second poll), names are unique per
project (409 ``alreadyExists``), missing things are 404 ``notFound``, errors use Google's
JSON shape, and every call needs a bearer token the metadata server issued. It records
every request so tests can count API calls.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, str], bytes]
SELF_LINK_BASE = "https://www.googleapis.com/compute/v1"  # not our endpoint, as in real life


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 that hands every request to ``handle``."""

    def __init__(self, handle: Callable[[str, str, dict[str, str], bytes], Reply]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, data = handle(self.command, self.path, headers, body)
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def _json(status: int, doc: Any) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()


def google_error(status: int, reason: str, message: str) -> Reply:
    errors = [{"message": message, "domain": "global", "reason": reason}]
    return _json(status, {"error": {"code": status, "message": message, "errors": errors}})


@dataclass
class _Operation:
    doc: dict[str, Any]
    apply: Callable[[], dict[str, Any] | None]
    polls: int = 0


@dataclass
class FakeCompute:
    """One project's slice of the Compute API."""

    project: str = "flannel-test"
    tokens: set[str] = field(default_factory=set)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    route_quota: int | None = None
    """Insert operations fail with QUOTA_EXCEEDED once this many routes exist."""
    denied: set[str] = field(default_factory=set)
    """Calls answered 403, by name: "routes.insert", "routes.delete", "routes.get", ..."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    _ops: dict[str, _Operation] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = LoopbackServer(self.handle)
        self.url = self.server.url + "/compute/v1"

    def close(self) -> None:
        self.server.close()

    # -- fixtures ----------------------------------------------------------------------------

    def link(self, path: str) -> str:
        return f"{SELF_LINK_BASE}/projects/{self.project}/{path}"

    def add_network(self, name: str) -> dict[str, Any]:
        doc = {
            "kind": "compute#network",
            "name": name,
            "selfLink": self.link(f"global/networks/{name}"),
        }
        self.networks[name] = doc
        return doc

    def add_instance(self, zone: str, name: str, can_ip_forward: bool = True) -> dict[str, Any]:
        doc = {
            "kind": "compute#instance",
            "name": name,
            "zone": self.link(f"zones/{zone}"),
            "canIpForward": can_ip_forward,
            "selfLink": self.link(f"zones/{zone}/instances/{name}"),
        }
        self.instances[(zone, name)] = doc
        return doc

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(kind for _, kind in self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- HTTP --------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        url = urllib.parse.urlsplit(raw_path)
        query = dict(urllib.parse.parse_qsl(url.query))
        prefix = f"/compute/v1/projects/{self.project}/"
        if not url.path.startswith(prefix):
            return google_error(404, "notFound", f"The resource '{url.path}' was not found")
        parts = url.path[len(prefix) :].split("/")
        kind = _kind(method, parts)
        with self._lock:
            self.requests.append((method, kind))
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return google_error(
                    401, "authError", "Request had invalid authentication credentials."
                )
            if kind in self.denied:
                return google_error(
                    403, "forbidden", f"Required '{kind}' permission for '{url.path}'"
                )
            doc = json.loads(body) if body else None
            return self._route(method, parts, query, doc)

    def _route(self, method: str, parts: list[str], query: dict[str, str], doc: Any) -> Reply:
        match method, parts:
            case "GET", ["global", "networks", name] if name in self.networks:
                return _json(200, self.networks[name])
            case "GET", ["zones", zone, "instances", name] if (zone, name) in self.instances:
                return _json(200, self.instances[(zone, name)])
            case "GET", ["global", "routes"]:
                return self._list(query)
            case "GET", ["global", "routes", name] if name in self.routes:
                return _json(200, self.routes[name])
            case "POST", ["global", "routes"]:
                return self._insert(doc)
            case "DELETE", ["global", "routes", name] if name in self.routes:
                return self._operation("delete", name, lambda: self._delete_now(name))
            case "GET", ["global", "operations", name] if name in self._ops:
                return self._poll(name)
        return google_error(404, "notFound", f"The resource '{'/'.join(parts)}' was not found")

    def _list(self, query: dict[str, str]) -> Reply:
        names = sorted(self.routes)
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 500)
        page = {
            "kind": "compute#routeList",
            "items": [self.routes[n] for n in names[start : start + size]],
        }
        if start + size < len(names):
            page["nextPageToken"] = str(start + size)
        return _json(200, page)

    def _insert(self, doc: Any) -> Reply:
        if not isinstance(doc, dict) or not doc.get("name") or not doc.get("destRange"):
            return google_error(400, "invalid", "Invalid value for field 'resource'")
        name = str(doc["name"])
        if name in self.routes:
            return google_error(
                409,
                "alreadyExists",
                f"The resource '{self.link('global/routes/' + name)}' already exists",
            )
        route = {**doc, "kind": "compute#route", "selfLink": self.link(f"global/routes/{name}")}

        def apply() -> dict[str, Any] | None:
            if self.route_quota is not None and len(self.routes) >= self.route_quota:
                message = f"Quota 'ROUTES' exceeded.  Limit: {self.route_quota:g} globally."
                return {"errors": [{"code": "QUOTA_EXCEEDED", "message": message}]}
            if name in self.routes:
                return {"errors": [{"code": "RESOURCE_ALREADY_EXISTS", "message": name}]}
            self.routes[name] = route
            return None

        return self._operation("insert", name, apply)

    def _delete_now(self, name: str) -> dict[str, Any] | None:
        self.routes.pop(name, None)
        return None

    def _operation(
        self, kind: str, target: str, apply: Callable[[], dict[str, Any] | None]
    ) -> Reply:
        name = f"operation-{next(self._ids)}-{kind}"
        doc = {
            "kind": "compute#operation",
            "name": name,
            "operationType": kind,
            "status": "PENDING",
            "targetLink": self.link(f"global/routes/{target}"),
            "selfLink": self.link(f"global/operations/{name}"),
        }
        self._ops[name] = _Operation(doc, apply)
        return _json(200, doc)

    def _poll(self, name: str) -> Reply:
        op = self._ops[name]
        if op.doc["status"] != "DONE":
            op.polls += 1
            if op.polls == 1:
                op.doc["status"] = "RUNNING"
            else:
                error = op.apply()
                op.doc["status"] = "DONE"
                if error is not None:
                    op.doc["error"] = error
        return _json(200, op.doc)


def _kind(method: str, parts: list[str]) -> str:
    """A call's name for counting and denying: "routes.get", "globalOperations.get", ..."""
    collections = {"routes", "networks", "instances", "operations"}
    if parts[-1] in collections:  # .../routes: list or insert
        collection, verb = parts[-1], {"GET": "list", "POST": "insert"}.get(method, method)
    else:  # .../routes/NAME: get or delete
        collection = parts[-2] if len(parts) >= 2 else "?"
        verb = {"GET": "get", "DELETE": "delete"}.get(method, method)
    return ("globalOperations" if collection == "operations" else collection) + "." + verb


class FakeMetadata:
    """The GCE metadata server of one instance; its tokens are accepted by ``compute``."""

    def __init__(self, compute: FakeCompute, zone: str, instance: str, network: str) -> None:
        self.compute = compute
        self.values = {
            "/project/project-id": compute.project,
            "/project/numeric-project-id": "123456789",
            "/instance/zone": f"projects/123456789/zones/{zone}",
            "/instance/name": instance,
            "/instance/hostname": f"{instance}.{zone}.c.{compute.project}.internal",
            "/instance/network-interfaces/0/network": f"projects/123456789/networks/{network}",
        }
        self.requests: list[str] = []
        self._tokens = itertools.count(1)
        self.server = LoopbackServer(self.handle)
        self.url = self.server.url + "/computeMetadata/v1"

    def close(self) -> None:
        self.server.close()

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        path = urllib.parse.urlsplit(raw_path).path.removeprefix("/computeMetadata/v1")
        self.requests.append(path)
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google":
            return 403, flavor, b"Missing required header: Metadata-Flavor"
        if method != "GET":
            return 405, flavor, b"Method not allowed"
        if path == "/instance/service-accounts/default/token":
            token = f"token-{self.values['/instance/name']}-{next(self._tokens)}"
            self.compute.tokens.add(token)
            doc = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
            return 200, {**flavor, "Content-Type": "application/json"}, json.dumps(doc).encode()
        if path in self.values:
            return 200, {**flavor, "Content-Type": "application/text"}, self.values[path].encode()
        return 404, flavor, b"Not Found"
