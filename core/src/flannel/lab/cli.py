"""``flannel lab``: bring up, inspect and tear down a namespace fabric (typer sub-app)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flannel.lab.lab import Lab, down_prefix
from flannel.lab.system import LabError

app = typer.Typer(
    name="lab",
    help="A real multi-host flannel fabric on this machine, in network namespaces.",
    no_args_is_help=True,
)
console = Console()

NameOpt = Annotated[str, typer.Option("--name", help="lab name (namespaces flannel-lab-NAME-*)")]


def _fail(exc: LabError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@app.command()
def up(
    hosts: Annotated[int, typer.Option(help="number of hosts")] = 3,
    backend: Annotated[
        str, typer.Option(help="Backend.Type, e.g. host-gw, vxlan, udp")
    ] = "host-gw",
    network: Annotated[str, typer.Option(help="flannel Network CIDR")] = "10.244.0.0/16",
    config: Annotated[str | None, typer.Option(help="full network config JSON")] = None,
    segments: Annotated[int, typer.Option(help="L3 segments joined by a router")] = 1,
    ipv6: Annotated[bool, typer.Option(help="dual-stack underlay and pods")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for readiness")] = 60.0,
    name: NameOpt = "default",
) -> None:
    """Build the lab, start `flannel run` on every host and wait until it is ready."""
    with console.status("building lab") as spinner:

        def progress(text: str) -> None:
            spinner.update(text)
            console.log(text)

        lab = Lab(name=name, hosts=hosts, backend=backend, network=network, config=config,
                  segments=segments, ipv6=ipv6, progress=progress)  # fmt: skip
        try:
            lab.up()
            spinner.update("waiting for subnets and routes")
            lab.wait_ready(timeout, routes=segments == 1)
        except LabError as exc:
            console.print(f"[red]error:[/red] {exc}")
            console.print(f"the lab is left up for inspection: `flannel lab down --name {name}`")
            raise typer.Exit(1) from None
    _status_table(lab, ping=False)
    console.print(f"[green]lab {name!r} is up[/green]: `flannel lab status --name {name}`")


@app.command()
def status(
    name: NameOpt = "default",
    ping: Annotated[bool, typer.Option(help="include the pod-to-pod ping matrix")] = True,
) -> None:
    """Hosts, subnets, daemon state, peers routed and the ping matrix."""
    try:
        lab = Lab.load(name)
    except LabError as exc:
        raise _fail(exc) from None
    _status_table(lab, ping=ping)


def _status_table(lab: Lab, ping: bool) -> None:
    table = Table(title=f"lab {lab.name} ({lab.state.backend})")
    for col in ("host", "address", "seg", "subnet", "daemon", "peers routed", "pod"):
        table.add_column(col)
    for row in lab.status():
        color = "green" if row.daemon == "running" else "red"
        table.add_row(row.name, row.address, str(row.segment), row.subnet or "-",
                      f"[{color}]{row.daemon}[/{color}]", f"{row.peers_routed}/{row.peers_total}",
                      row.pod_ip or "-")  # fmt: skip
    console.print(table)
    if ping:
        _matrix(lab)


def _matrix(lab: Lab) -> bool:
    results = lab.ping_matrix()
    table = Table(title="pod-to-pod ping (row pings column)")
    table.add_column("")
    for dst in lab.hosts:
        table.add_column(dst)
    for src in lab.hosts:
        cells = ["-" if src == dst else ("[green]ok[/green]" if results[(src, dst)]
                 else "[red]FAIL[/red]") for dst in lab.hosts]  # fmt: skip
        table.add_row(src, *cells)
    console.print(table)
    return all(results.values())


@app.command("ping")
def ping_cmd(name: NameOpt = "default") -> None:
    """Pod-to-pod ping matrix; exit 1 if any pair fails."""
    try:
        lab = Lab.load(name)
    except LabError as exc:
        raise _fail(exc) from None
    if not _matrix(lab):
        raise typer.Exit(1)


@app.command()
def logs(host: str, name: NameOpt = "default") -> None:
    """Print HOST's `flannel run` log."""
    try:
        print(Lab.load(name).logs(host), end="")
    except LabError as exc:
        raise _fail(exc) from None


@app.command("add-host")
def add_host(
    name: NameOpt = "default",
    segment: Annotated[int | None, typer.Option(help="segment to join")] = None,
    timeout: float = 60.0,
) -> None:
    """Add a host, start its daemon and build its pod."""
    try:
        lab = Lab.load(name)
        host = lab.add_host(segment)
        lab.wait_ready(timeout, routes=lab.state.segments == 1)
    except LabError as exc:
        raise _fail(exc) from None
    console.print(f"added {host} ({lab.host(host).address}, subnet {lab.host(host).subnet})")


@app.command("remove-host")
def remove_host(
    host: str,
    name: NameOpt = "default",
    keep_lease: Annotated[bool, typer.Option(help="leave its lease in etcd")] = False,
) -> None:
    """Stop HOST's daemon, delete its lease and its namespaces."""
    try:
        Lab.load(name).remove_host(host, delete_lease=not keep_lease)
    except LabError as exc:
        raise _fail(exc) from None
    console.print(f"removed {host}")


@app.command()
def down(name: NameOpt = "default") -> None:
    """Stop every process and delete every namespace of the lab (works after a crash)."""
    try:
        down_prefix(f"flannel-lab-{name}")
    except LabError as exc:
        raise _fail(exc) from None
    console.print(f"lab {name!r} is down")
