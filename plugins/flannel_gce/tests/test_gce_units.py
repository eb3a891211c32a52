"""Pure logic of gce: options, route names, Google error messages, operation waits, guard."""

from __future__ import annotations

import socket
from ipaddress import IPv4Network
from typing import Any

import pytest

from flannel.backend import BackendConfigError, BackendError
from flannel.testing.netguard import NetworkGuardError
from flannel_gce.compute import explain_http, explain_operation, link_key
from flannel_gce.options import DEFAULT_COMPUTE_URL, GceOptions, parse_options
from flannel_gce.routes import GceRoutes, route_name


def test_route_name_is_flanneld_s() -> None:
    assert route_name(IPv4Network("10.1.5.0/24")) == "flannel-10-1-5-0-24"


def test_options_defaults_env_and_case_insensitive_keys() -> None:
    assert parse_options({"Type": "gce"}, env={}) == GceOptions()
    env = {"FLANNEL_GCE_COMPUTE_URL": "http://127.0.0.1:9/compute/v1/"}
    opts = parse_options({"type": "gce", "deleterouteonshutdown": True}, env=env)
    assert opts.compute_url == "http://127.0.0.1:9/compute/v1" and opts.delete_route_on_shutdown
    assert parse_options({}, env={}).compute_url == DEFAULT_COMPUTE_URL


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            {"ComputeEndpoint": "compute.googleapis.com"},
            r"ComputeEndpoint must be an http\(s\) URL",
        ),
        ({"DeleteRouteOnShutdown": 1}, r"DeleteRouteOnShutdown must be true or false, got 1"),
        ({"CheckInterval": "5m"}, r"CheckInterval must be a number of seconds >= 0, got '5m'"),
        ({"OperationTimeout": 0}, r"OperationTimeout must be a number of seconds >= 1, got 0"),
    ],
)
def test_bad_options_name_key_and_value(backend: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendConfigError, match=r"^gce: Backend\." + message):
        parse_options(backend, env={})


def google(status: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": reason, "message": message}],
        }
    }


def test_http_errors_say_what_to_do() -> None:
    denied = str(
        explain_http(
            403, google(403, "forbidden", "Required 'compute.routes.create'"), "insert route r"
        )
    )
    assert (
        denied.startswith("gce: insert route r was denied (HTTP 403 forbidden")
        and "compute-rw" in denied
    )
    quota = str(explain_http(403, google(403, "quotaExceeded", "Quota exceeded"), "insert route r"))
    assert "over quota" in quota and "quotaExceeded" in quota
    auth = str(explain_http(401, google(401, "authError", "bad token"), "get route r"))
    assert "not authenticated" in auth and "GOOGLE_APPLICATION_CREDENTIALS" in auth
    other = str(explain_http(500, "oops\nmore", "get route r"))
    assert other.startswith("gce: get route r failed: HTTP 500")


def test_operation_errors() -> None:
    assert explain_operation({"status": "DONE"}, "insert route r", "p") is None
    quota = explain_operation(
        {"error": {"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'ROUTES' exceeded."}]}},
        "insert route r",
        "proj",
    )
    assert quota is not None and "project proj is out of route quota (QUOTA_EXCEEDED" in str(quota)
    other = explain_operation({"error": {"errors": [{"code": "X", "message": "y"}]}}, "a", "p")
    assert str(other) == "gce: a failed: X: y"


def test_link_key_ignores_host_and_version() -> None:
    a = "https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/i"
    b = "https://compute.googleapis.com/compute/beta/projects/p/zones/z/instances/i"
    assert link_key(a) == link_key(b) == "projects/p/zones/z/instances/i"


class StuckApi:
    """An API whose operations never finish."""

    project = "p"

    def __init__(self) -> None:
        self.polls = 0

    def get_operation(self, name: str) -> dict[str, Any]:
        self.polls += 1
        return {"name": name, "status": "RUNNING"}


async def test_operation_wait_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flannel_gce.routes.FIRST_POLL", 0.001)
    api = StuckApi()
    routes = GceRoutes(api, "n", "i", operation_timeout=0.05)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=r"operation op-1 did not finish within 0\.05 s"):
        await routes.wait({"name": "op-1", "status": "PENDING"}, "insert route r")
    assert api.polls >= 1


def test_guard_refuses_anything_but_loopback() -> None:
    with pytest.raises(NetworkGuardError):
        socket.getaddrinfo("compute.googleapis.com", 443)
    with pytest.raises(NetworkGuardError), socket.socket() as sock:
        sock.connect(("169.254.169.254", 80))
    assert socket.getaddrinfo("localhost", 80)
