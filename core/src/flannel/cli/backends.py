"""``flannel backends list``: which backend plugins are installed and whether they loaded."""

import json
from typing import Annotated

import typer

from flannel.cli.common import handle_errors

app = typer.Typer(name="backends", help="Backend plugins.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_backends(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every plugin of the `flannel` entry-point group: type, distribution, version, status."""
    from flannel.plugins.host import PluginHost

    host = PluginHost.load()
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in host.plugins], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="flannel backends")
    for column in ("type", "plugin", "distribution", "version", "status", "load error"):
        table.add_column(column)
    style = {"ok": "green", "error": "red", "conflict": "yellow", "disabled": "dim"}
    for info in host.plugins:
        status = f"[{style.get(info.status, '')}]{info.status}[/]"
        table.add_row(
            ", ".join(info.types) or "-",
            info.name,
            info.distribution or "-",
            info.version or "-",
            status,
            info.error or "",
        )
    Console().print(table)


@app.command("new")
@handle_errors
def new_backend(
    name: Annotated[str, typer.Argument(help="the Backend.Type, e.g. 'my-backend'")],
    directory: Annotated[
        str, typer.Option("--dir", help="where to create flannel-NAME/")
    ] = ".",
) -> None:
    """Generate a backend distribution (entry point, hooks, tests) that passes its own tests."""
    from pathlib import Path

    import flannel
    from flannel.scaffold import ScaffoldError, generate_backend

    major, minor = flannel.__version__.split(".")[:2]
    requirement = f"flannel-core>={major}.{minor},<{major}.{int(minor) + 1}"
    try:
        root = generate_backend(name, Path(directory), requirement)
    except ScaffoldError as exc:
        typer.echo(f"flannel backends new: error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"created {root}: cd there, `pip install -e '.[test]'`, then `pytest`")
