"""``flannel leases list | reserve | unreserve``: the subnet leases in etcd."""

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any

import typer

from flannel.cli.common import CliError, EtcdFlags, with_etcd

app = typer.Typer(name="leases", help="Subnet leases and reservations.", no_args_is_help=True)


def _subnet(text: str) -> IPv4Network:
    try:
        return IPv4Network(text)
    except ValueError as exc:
        raise CliError(f"bad subnet {text!r}: {exc}; write it like 10.244.5.0/24") from None


def _address(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise CliError(f"bad public IP {text!r}: write an IPv4 address like 198.18.0.5") from None


def _expires(seconds: float | None, reservation: bool) -> str:
    if reservation:
        return "never (reserved)"
    if seconds is None:
        return "expired"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@app.command("list")
@with_etcd
async def list_leases(
    *,
    etcd: EtcdFlags,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every lease and reservation: subnet, public IP, backend, time left."""
    manager = etcd.manager()
    try:
        leases = await manager.list_leases()
        rows: list[dict[str, Any]] = []
        for lease in leases:
            ttl = None if lease.is_reservation else await manager.lease_remaining_ttl(lease)
            rows.append(
                {
                    "key": lease.key,
                    "subnet": str(lease.subnet) if lease.subnet else None,
                    "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
                    "public_ip": str(lease.attrs.public_ip),
                    "public_ipv6": str(lease.attrs.public_ipv6)
                    if lease.attrs.public_ipv6
                    else None,
                    "backend_type": lease.attrs.backend_type,
                    "backend_data": lease.attrs.backend_data,
                    "reservation": lease.is_reservation,
                    "expires_in": ttl,
                }
            )
    finally:
        await manager.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"leases under {etcd.prefix}")
    for column in ("subnet", "public IP", "backend", "expires in"):
        table.add_column(column)
    for row in rows:
        subnet = " ".join(s for s in (row["subnet"], row["ipv6_subnet"]) if s)
        public = " ".join(s for s in (row["public_ip"], row["public_ipv6"]) if s)
        table.add_row(
            subnet + (" [bold](reserved)[/]" if row["reservation"] else ""),
            public,
            row["backend_type"] or "-",
            _expires(row["expires_in"], row["reservation"]),
        )
    Console().print(table)


@app.command("reserve")
@with_etcd
async def reserve(
    subnet: Annotated[str, typer.Argument(help="the subnet, e.g. 10.244.5.0/24")],
    public_ip: Annotated[str, typer.Argument(help="the host's public IP, e.g. 198.18.0.5")],
    *,
    etcd: EtcdFlags,
) -> None:
    """Reserve SUBNET for the host with PUBLIC_IP: it never expires and is never reassigned."""
    net, address = _subnet(subnet), _address(public_ip)
    manager = etcd.manager()
    try:
        lease = await manager.reserve(net, address)
    finally:
        await manager.close()
    typer.echo(f"reserved {lease.subnet} for {lease.attrs.public_ip}")


@app.command("unreserve")
@with_etcd
async def unreserve(
    subnet: Annotated[str, typer.Argument(help="the reserved subnet, e.g. 10.244.5.0/24")],
    *,
    etcd: EtcdFlags,
) -> None:
    """Remove the reservation of SUBNET."""
    net = _subnet(subnet)
    manager = etcd.manager()
    try:
        await manager.unreserve(net)
    finally:
        await manager.close()
    typer.echo(f"removed the reservation of {net}")
