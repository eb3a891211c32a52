"""Pure logic of aws-vpc: options, the per-table plan, AWS error messages, the test guard."""

from __future__ import annotations

import socket
from ipaddress import IPv4Network
from typing import Any

import pytest
from botocore.exceptions import ClientError

from flannel.backend import BackendConfigError
from flannel.testing.netguard import NetworkGuardError
from flannel_awsvpc.ec2 import explain
from flannel_awsvpc.options import AwsVpcOptions, parse_options
from flannel_awsvpc.plan import Target, plan_table

US = Target("i-0aaaaaaaaaaaaaaaa", "eni-0aaaaaaaaaaaaaaaa")
OWN = IPv4Network("10.244.1.0/24")
NET = IPv4Network("10.244.0.0/16")


def route(
    cidr: str, state: str = "active", origin: str = "CreateRoute", **target: str
) -> dict[str, Any]:
    return {"DestinationCidrBlock": cidr, "State": state, "Origin": origin, **target}


def test_options_defaults_and_case_insensitive_keys() -> None:
    assert parse_options({"Type": "aws-vpc"}, env={}) == AwsVpcOptions()
    opts = parse_options(
        {"type": "aws-vpc", "routetableid": "rtb-0123abcd", "deleteRouteOnShutdown": True}, env={}
    )
    assert opts.route_table_ids == ("rtb-0123abcd",) and opts.delete_route_on_shutdown
    listed = parse_options(
        {"RouteTableID": ["rtb-0123abcd", "rtb-0123abcd", "rtb-89abcdef"]}, env={}
    )
    assert listed.route_table_ids == ("rtb-0123abcd", "rtb-89abcdef")


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"RouteTableID": "table-1"}, r"RouteTableID has 'table-1', which is not a route table ID"),
        ({"RouteTableID": 7}, r"RouteTableID must be a route table ID or a non-empty list.*7"),
        (
            {"DeleteRouteOnShutdown": "yes"},
            r"DeleteRouteOnShutdown must be true or false, got 'yes'",
        ),
        ({"MetadataEndpoint": "169.254.169.254"}, r"MetadataEndpoint must be an http\(s\) URL"),
        ({"CheckInterval": -1}, r"CheckInterval must be a number of seconds >= 0.*-1"),
    ],
)
def test_bad_options_name_key_and_value(backend: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendConfigError, match=r"^aws-vpc: Backend\." + message):
        parse_options(backend, env={})


def test_plan_keeps_a_right_route_and_cleans_blackholes_inside_the_network() -> None:
    plan = plan_table(
        "rtb-1",
        [
            route("198.18.0.0/16", origin="CreateRouteTable", GatewayId="local"),
            route("10.244.1.0/24", NetworkInterfaceId=US.eni_id),
            route("10.244.7.0/24", state="blackhole", NetworkInterfaceId="eni-gone"),
            route("172.16.0.0/24", state="blackhole", NetworkInterfaceId="eni-gone"),
            route("10.244.3.0/24", NetworkInterfaceId="eni-other"),
            route("10.244.4.0/24", InstanceId=US.instance_id),
            {
                "DestinationIpv6CidrBlock": "fd00::/64",
                "State": "blackhole",
                "Origin": "CreateRoute",
            },
        ],
        OWN,
        NET,
        US,
    )
    assert plan.action == "keep"
    assert plan.delete == ("10.244.7.0/24", "10.244.4.0/24")


@pytest.mark.parametrize(
    ("routes", "action"),
    [
        ([], "create"),
        ([route("10.244.1.0/24", NetworkInterfaceId="eni-other")], "replace"),
        ([route("10.244.1.0/24", state="blackhole", NetworkInterfaceId=US.eni_id)], "replace"),
        ([route("10.244.1.0/24", InstanceId=US.instance_id)], "keep"),
    ],
)
def test_plan_action_for_our_subnet(routes: list[dict[str, Any]], action: str) -> None:
    plan = plan_table("rtb-1", routes, OWN, NET, US)
    assert (plan.action, plan.delete, plan.changes) == (action, (), action != "keep")


def client_error(code: str, message: str = "boom") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "CreateRoute")


def test_error_messages_say_what_to_do() -> None:
    quota = str(explain(client_error("RouteLimitExceeded"), "CreateRoute 10.244.1.0/24", "rtb-1"))
    assert "rtb-1" in quota and "RouteLimitExceeded" in quota and "50 routes per table" in quota
    denied = str(explain(client_error("UnauthorizedOperation"), "CreateRoute", "rtb-1"))
    assert "denied (UnauthorizedOperation)" in denied and "ec2:CreateRoute" in denied
    missing = str(
        explain(client_error("InvalidRouteTableID.NotFound"), "DescribeRouteTables", "rtb-9")
    )
    assert (
        missing.startswith("aws-vpc: route table rtb-9 does not exist")
        and "RouteTableID" in missing
    )
    other = str(explain(client_error("Throttling", "slow down\nmore"), "CreateRoute", "rtb-1"))
    assert other == "aws-vpc: CreateRoute on rtb-1 failed: Throttling: slow down"


def test_guard_refuses_anything_but_loopback() -> None:
    with pytest.raises(NetworkGuardError):
        socket.getaddrinfo("ec2.us-east-1.amazonaws.com", 443)
    with pytest.raises(NetworkGuardError), socket.socket() as sock:
        sock.connect(("198.18.0.1", 80))
    assert socket.getaddrinfo("127.0.0.1", 80)
