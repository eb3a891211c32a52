"""The typer app: every ``flannel`` subcommand except ``run`` (see :mod:`flannel.cli.entry`).

``flannel lab`` and ``flannel doctor`` live in their own modules (:mod:`flannel.lab.cli`,
:mod:`flannel.doctor_cli`); they are added only if they import, so a missing or broken one never
breaks the other commands.
"""

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from flannel.cli import backends, config_cmd, docker_opts, leases
from flannel.cli.common import EXIT_FAILURE, State

log = logging.getLogger("flannel.cli")

app = typer.Typer(
    name="flannel",
    help="flannel: one subnet per host, every subnet reachable. `flannel run` is the daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 success (or stopped by SIGTERM/SIGINT), 1 failure, 2 usage error.",
)


def version_text() -> str:
    """Core and every plugin with its version and load status."""
    from flannel import __version__
    from flannel.plugins.host import PluginHost

    lines = [f"flannel-core {__version__}"]
    host = PluginHost.load()
    for info in host.plugins:
        what = ",".join(info.types) if info.types else "-"
        dist = f"{info.distribution or '?'} {info.version or '?'}"
        status = "" if info.status == "ok" else f" [{info.status}: {info.error}]"
        lines.append(f"  plugin {info.name}: {dist} (types: {what}){status}")
    return "\n".join(lines)


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True,
                     help="print core and plugin versions and exit"),
    ] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="more detail; tracebacks on errors")
    ] = 0,
) -> None:  # fmt: skip
    """flannel: one subnet per host, every subnet reachable. `flannel run --help`: the daemon."""
    State.verbose = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run(ctx: typer.Context) -> None:
    """Run the daemon (flanneld's flags; `flannel run -help` lists them)."""
    # Normally dispatched before typer loads (flannel.cli.entry); this is for `flannel -v run`.
    from flannel.cli.flanneld import run as run_daemon

    raise typer.Exit(run_daemon(ctx.args, prog="flannel run"))


app.add_typer(backends.app)
app.add_typer(config_cmd.app)
app.add_typer(leases.app)
app.command("docker-opts")(docker_opts.docker_opts)


def _optional(module: str, attr: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # missing or broken: the other commands must keep working
        log.debug("optional command %s not available: %s", module, exc)
        return None


def _add_optional_commands() -> None:
    lab = _optional("flannel.lab.cli", "app")
    if isinstance(lab, typer.Typer):
        app.add_typer(lab, name="lab")
    for module in ("flannel.doctor_cli", "flannel.doctor"):
        doctor = _optional(module, "app")
        if isinstance(doctor, typer.Typer):
            app.add_typer(doctor, name="doctor")
            break


_add_optional_commands()


def run_app(args: Sequence[str]) -> int:
    """Run the app and return the exit code (2 for usage errors, as click does)."""
    try:
        app(list(args), prog_name="flannel", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return EXIT_FAILURE
    return 0
