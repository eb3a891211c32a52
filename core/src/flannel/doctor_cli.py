"""``flannel doctor`` as a typer app (rich table, or ``--json``); the checks live in
:mod:`flannel.doctor`. Mount with ``app.add_typer(doctor_cli.app, name="doctor")`` or run
``python -m flannel.doctor_cli``. Flags mirror the daemon's and read ``FLANNELD_*`` too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from flannel.doctor import FAIL, OK, WARN, Check, DoctorOptions, exit_code, run_checks, to_json

__all__ = ["app", "doctor", "render"]

app = typer.Typer(add_completion=False, help="Check that this host can run flannel.")

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


def _split(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@app.callback(invoke_without_command=True)
def doctor(
    etcd_endpoints: Annotated[
        str, typer.Option(envvar="FLANNELD_ETCD_ENDPOINTS", help="comma-separated etcd URLs")
    ] = "http://127.0.0.1:4001,http://127.0.0.1:2379",
    etcd_prefix: Annotated[
        str, typer.Option(envvar="FLANNELD_ETCD_PREFIX")
    ] = "/coreos.com/network",
    etcd_cafile: Annotated[str, typer.Option(envvar="FLANNELD_ETCD_CAFILE")] = "",
    etcd_certfile: Annotated[str, typer.Option(envvar="FLANNELD_ETCD_CERTFILE")] = "",
    etcd_keyfile: Annotated[str, typer.Option(envvar="FLANNELD_ETCD_KEYFILE")] = "",
    etcd_username: Annotated[str, typer.Option(envvar="FLANNELD_ETCD_USERNAME")] = "",
    etcd_password: Annotated[
        str, typer.Option(envvar="FLANNELD_ETCD_PASSWORD", show_default=False)
    ] = "",
    iface: Annotated[list[str] | None, typer.Option(envvar="FLANNELD_IFACE")] = None,
    iface_regex: Annotated[list[str] | None, typer.Option(envvar="FLANNELD_IFACE_REGEX")] = None,
    net_config: Annotated[
        Path | None, typer.Option(help="check this net-conf.json instead of etcd's config")
    ] = None,
    ip_masq: Annotated[
        bool, typer.Option("--ip-masq", envvar="FLANNELD_IP_MASQ", help="masquerade is wanted")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds per etcd endpoint")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check etcd, the network config, kernel support, interface/MTU, leftovers, firewall."""
    opts = DoctorOptions(
        etcd_endpoints=_split([etcd_endpoints]),
        etcd_prefix=etcd_prefix,
        etcd_cafile=etcd_cafile,
        etcd_certfile=etcd_certfile,
        etcd_keyfile=etcd_keyfile,
        etcd_username=etcd_username,
        etcd_password=etcd_password,
        iface=list(iface or []),
        iface_regex=list(iface_regex or []),
        net_config=net_config,
        ip_masq=ip_masq,
        timeout=timeout,
    )
    checks = asyncio.run(run_checks(opts))
    if as_json:
        typer.echo(to_json(checks))
    else:
        render(checks)
    raise typer.Exit(exit_code(checks))


def render(checks: list[Check]) -> None:
    """A rich table: check, status, detail; then a one-line verdict."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="flannel doctor", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for check in checks:
        table.add_row(check.name, f"[{_STYLE[check.status]}]{check.status}[/]", check.detail)
    console = Console()
    console.print(table)
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        console.print(f"[bold red]problems found:[/] {', '.join(failed)}")
    else:
        console.print("[green]no problems found[/]")


if __name__ == "__main__":
    app(prog_name="flannel doctor")
