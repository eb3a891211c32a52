"""A thin client for the few Compute Engine v1 REST calls gce needs (routes, operations).

Blocking (requests); the backend calls it from worker threads. Google's error JSON is turned
into one-line BackendErrors that say what failed and what to do; quota and permission
problems get their own messages because they need an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flannel.backend import BackendError

__all__ = ["ComputeClient", "GceApiError", "explain_http", "explain_operation", "link_key"]

TIMEOUT = (5.0, 30.0)  # connect, read
PAGE_SIZE = 500
PERMISSIONS = (
    "give the instance's service account compute.routes.get/list/create/delete, "
    "compute.networks.get/updatePolicy and compute.instances.get (e.g. "
    "roles/compute.networkAdmin) and the compute-rw scope"
)
_QUOTA_REASONS = {"quotaExceeded", "rateLimitExceeded", "QUOTA_EXCEEDED", "userRateLimitExceeded"}


class GceApiError(BackendError):
    """A Compute API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def link_key(link: str) -> str:
    """A selfLink without its host and API version: ``projects/p/zones/z/instances/i``."""
    at = link.find("projects/")
    return link[at:] if at >= 0 else link


def explain_http(status: int, body: Any, action: str) -> GceApiError:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    errors = error.get("errors") if isinstance(error, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    reason = str(first.get("reason") or (error.get("status") if isinstance(error, dict) else ""))
    message = str(error.get("message") if isinstance(error, dict) else "") or str(body)[:200]
    message = message.splitlines()[0] if message else ""
    if reason in _QUOTA_REASONS or (status == 403 and "quota" in message.lower()):
        text = (
            f"gce: {action} failed: over quota (HTTP {status} {reason}: {message}); raise the "
            f"project's quota (routes: 250 by default) or slow down"
        )
    elif status == 403:
        text = f"gce: {action} was denied (HTTP 403 {reason}: {message}); {PERMISSIONS}"
    elif status == 401:
        text = (
            f"gce: {action} was not authenticated (HTTP 401: {message}); check the instance's "
            f"service account or GOOGLE_APPLICATION_CREDENTIALS"
        )
    else:
        text = f"gce: {action} failed: HTTP {status} {reason}: {message}".replace("  ", " ")
    return GceApiError(text, status, reason)


def explain_operation(op: dict[str, Any], action: str, project: str) -> GceApiError | None:
    """The error of a finished operation, or None if it succeeded."""
    errors = (op.get("error") or {}).get("errors") or []
    if not errors:
        return None
    first = errors[0] if isinstance(errors[0], dict) else {}
    code, message = str(first.get("code", "UNKNOWN")), str(first.get("message", ""))
    if code == "QUOTA_EXCEEDED":
        return GceApiError(
            f"gce: {action} failed: project {project} is out of route quota (QUOTA_EXCEEDED: "
            f"{message}); raise the ROUTES quota or use fewer hosts per project",
            reason=code,
        )
    if code in {"PERMISSION_DENIED", "FORBIDDEN"}:
        return GceApiError(
            f"gce: {action} was denied ({code}: {message}); {PERMISSIONS}", 403, code
        )
    return GceApiError(f"gce: {action} failed: {code}: {message}", reason=code)


class ComputeClient:
    """Compute v1 calls for one project, over an (authorized) requests session."""

    def __init__(
        self, session: Any, base_url: str, project: str, on_call: Callable[[str], None]
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.project = project
        self._on_call = on_call

    def _request(
        self,
        op: str,
        method: str,
        path: str,
        action: str,
        body: Any = None,
        missing_ok: bool = False,
    ) -> Any:
        import requests

        url = f"{self.base_url}/projects/{self.project}/{path}"
        self._on_call(op)
        try:
            response = self.session.request(method, url, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise GceApiError(
                f"gce: {action} failed: no answer from the Compute API at {self.base_url} "
                f"({type(exc).__name__}); check network access to it"
            ) from None
        if missing_ok and response.status_code == 404:
            return None
        try:
            doc = response.json()
        except ValueError:
            doc = response.text
        if response.status_code >= 400:
            raise explain_http(response.status_code, doc, action)
        return doc

    def get_network(self, name: str) -> dict[str, Any]:
        return dict(
            self._request("networks.get", "GET", f"global/networks/{name}", f"get network {name}")
        )

    def get_instance(self, zone: str, name: str) -> dict[str, Any]:
        path = f"zones/{zone}/instances/{name}"
        return dict(self._request("instances.get", "GET", path, f"get instance {name} in {zone}"))

    def get_route(self, name: str) -> dict[str, Any] | None:
        doc = self._request(
            "routes.get", "GET", f"global/routes/{name}", f"get route {name}", missing_ok=True
        )
        return None if doc is None else dict(doc)

    def list_routes(self) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = []
        token = ""
        while True:
            query = f"global/routes?maxResults={PAGE_SIZE}" + (
                f"&pageToken={token}" if token else ""
            )
            doc = self._request("routes.list", "GET", query, "list routes")
            routes.extend(doc.get("items", []))
            token = str(doc.get("nextPageToken") or "")
            if not token:
                return routes

    def insert_route(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self._request(
                "routes.insert", "POST", "global/routes", f"insert route {body['name']}", body
            )
        )

    def delete_route(self, name: str) -> dict[str, Any] | None:
        doc = self._request(
            "routes.delete",
            "DELETE",
            f"global/routes/{name}",
            f"delete route {name}",
            missing_ok=True,
        )
        return None if doc is None else dict(doc)

    def get_operation(self, name: str) -> dict[str, Any]:
        return dict(
            self._request(
                "globalOperations.get", "GET", f"global/operations/{name}", f"get operation {name}"
            )
        )
