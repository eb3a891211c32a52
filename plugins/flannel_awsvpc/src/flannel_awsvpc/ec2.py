"""The EC2 calls aws-vpc makes, over boto3, with AWS errors turned into clear one-liners.

Blocking (boto3 is synchronous): the backend calls these from a worker thread. boto3 is
imported here, lazily, so loading the plugin stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel.backend import BackendError
from flannel_awsvpc.plan import TablePlan, Target, plan_table, points_at

__all__ = ["Ec2Routes", "explain"]

log = logging.getLogger(__name__)

PERMISSIONS = (
    "ec2:DescribeInstances, ec2:DescribeRouteTables, ec2:CreateRoute, ec2:ReplaceRoute, "
    "ec2:DeleteRoute, ec2:ModifyNetworkInterfaceAttribute"
)
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure"}


def explain(exc: Exception, action: str, subject: str) -> BackendError:
    """A one-line BackendError for a failed EC2 call: what failed, on what, and what to do."""
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", type(exc).__name__))
    message = str(error.get("Message", exc)).splitlines()[0] if error else str(exc)
    if code == "RouteLimitExceeded":
        return BackendError(
            f"aws-vpc: {action} in {subject} failed: the route table is full "
            f"(RouteLimitExceeded; AWS allows 50 routes per table unless raised): ask AWS "
            f"for a higher route quota, or spread hosts over several tables"
        )
    if code in _DENIED:
        return BackendError(
            f"aws-vpc: {action} on {subject} was denied ({code}): give the instance role "
            f"{PERMISSIONS}"
        )
    if code == "InvalidRouteTableID.NotFound":
        return BackendError(
            f"aws-vpc: route table {subject} does not exist (InvalidRouteTableID.NotFound): "
            f"fix Backend.RouteTableID, or leave it out to use the subnet's table"
        )
    if code == "InvalidInstanceID.NotFound":
        return BackendError(
            f"aws-vpc: instance {subject} does not exist in this region "
            f"(InvalidInstanceID.NotFound): check the metadata and EC2 endpoints"
        )
    return BackendError(f"aws-vpc: {action} on {subject} failed: {code}: {message}")


def make_client(region: str, endpoint_url: str | None) -> Any:
    """A boto3 EC2 client with bounded retries and timeouts."""
    import boto3  # lazy: ~150 ms, only when the backend is used
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    session = boto3.session.Session()
    return session.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config)


class Ec2Routes:
    """Our instance's routes in the VPC route tables."""

    def __init__(self, client: Any, instance_id: str, on_call: Callable[[str], None]) -> None:
        self.client = client
        self.instance_id = instance_id
        self._on_call = on_call

    def _call(self, op: str, subject: str, action: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        self._on_call(op)
        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            raise explain(exc, action, subject) from None
        except BotoCoreError as exc:
            raise BackendError(f"aws-vpc: {action} on {subject} failed: {exc}") from None

    def find_target(self, iface_addr: IPv4Address) -> tuple[Target, dict[str, Any]]:
        """Our ENI (the one holding ``iface_addr``) and its description."""
        reply = self._call(
            "describe_instances",
            self.instance_id,
            "DescribeInstances",
            InstanceIds=[self.instance_id],
        )
        addr = str(iface_addr)
        for reservation in reply.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                for eni in instance.get("NetworkInterfaces", []):
                    ips = {p.get("PrivateIpAddress") for p in eni.get("PrivateIpAddresses", [])}
                    ips.add(eni.get("PrivateIpAddress"))
                    if addr in ips:
                        target = Target(self.instance_id, str(eni["NetworkInterfaceId"]))
                        return target, eni
        raise BackendError(
            f"aws-vpc: instance {self.instance_id} has no network interface with address "
            f"{addr}: choose the VPC interface with --iface (or --iface-regex)"
        )

    def disable_source_dest_check(self, eni: dict[str, Any]) -> None:
        """Let the ENI carry pod traffic; only a warning on failure, as flanneld."""
        if eni.get("SourceDestCheck") is False:
            return
        eni_id = str(eni["NetworkInterfaceId"])
        try:
            self._call(
                "modify_network_interface_attribute",
                eni_id,
                "ModifyNetworkInterfaceAttribute(SourceDestCheck=false)",
                NetworkInterfaceId=eni_id,
                SourceDestCheck={"Value": False},
            )
        except BackendError as exc:
            log.warning("%s; pod traffic to this host will be dropped until it is disabled", exc)

    def default_tables(self, eni: dict[str, Any]) -> tuple[str, ...]:
        """The table associated with the ENI's subnet, else the VPC's main table."""
        subnet_id, vpc_id = str(eni.get("SubnetId", "")), str(eni.get("VpcId", ""))
        for filters in (
            [{"Name": "association.subnet-id", "Values": [subnet_id]}],
            [
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "association.main", "Values": ["true"]},
            ],
        ):
            reply = self._call(
                "describe_route_tables", vpc_id, "DescribeRouteTables", Filters=filters
            )
            tables = [str(t["RouteTableId"]) for t in reply.get("RouteTables", [])]
            if tables:
                return (tables[0],)
        raise BackendError(
            f"aws-vpc: no route table found for subnet {subnet_id} nor a main table for VPC "
            f"{vpc_id}: set Backend.RouteTableID"
        )

    def _tables(self, table_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Routes of each table, in one call (a missing table names itself in the error)."""
        try:
            reply = self._call(
                "describe_route_tables",
                ", ".join(table_ids),
                "DescribeRouteTables",
                RouteTableIds=list(table_ids),
            )
        except BackendError:
            if len(table_ids) == 1:
                raise
            for table_id in table_ids:  # find which table is the problem
                self._call(
                    "describe_route_tables",
                    table_id,
                    "DescribeRouteTables",
                    RouteTableIds=[table_id],
                )
            raise
        return {str(t["RouteTableId"]): list(t.get("Routes", [])) for t in reply["RouteTables"]}

    def ensure(
        self, table_ids: Sequence[str], own: IPv4Network, network: IPv4Network, target: Target
    ) -> list[TablePlan]:
        """Make each table route ``own`` to ``target``; returns the plans that were applied."""
        plans = [
            plan_table(table_id, routes, own, network, target)
            for table_id, routes in self._tables(table_ids).items()
        ]
        for plan in plans:
            self._apply(plan, target)
        return plans

    def _apply(self, plan: TablePlan, target: Target) -> None:
        table = plan.table_id
        for cidr in plan.delete:
            self.delete_route(table, cidr, why="stale or blackhole")
        if plan.action == "keep":
            return
        op = "create_route" if plan.action == "create" else "replace_route"
        verb = "CreateRoute" if plan.action == "create" else "ReplaceRoute"
        log.info("aws-vpc: %s %s -> %s in %s", verb, plan.own_cidr, target.eni_id, table)
        self._call(
            op,
            table,
            f"{verb} {plan.own_cidr} -> {target.eni_id}",
            RouteTableId=table,
            DestinationCidrBlock=plan.own_cidr,
            NetworkInterfaceId=target.eni_id,
        )

    def delete_route(self, table: str, cidr: str, why: str) -> None:
        from botocore.exceptions import ClientError

        log.info("aws-vpc: DeleteRoute %s in %s (%s)", cidr, table, why)
        self._on_call("delete_route")
        try:
            self.client.delete_route(RouteTableId=table, DestinationCidrBlock=cidr)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRoute.NotFound":
                raise explain(exc, f"DeleteRoute {cidr}", table) from None

    def withdraw(self, table_ids: Sequence[str], own: IPv4Network, target: Target) -> int:
        """Delete our route for ``own`` where it still points at us; returns how many."""
        deleted = 0
        for table_id, routes in self._tables(table_ids).items():
            for route in routes:
                if route.get("DestinationCidrBlock") == str(own) and points_at(route, target):
                    self.delete_route(table_id, str(own), why="lease released")
                    deleted += 1
        return deleted
