"""``flannel config show | set FILE | validate FILE``: the network config in etcd."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flannel.cli.common import CliError, EtcdFlags, handle_errors, with_etcd

app = typer.Typer(
    name="config", help="The network config at <prefix>/config.", no_args_is_help=True
)

FileArg = Annotated[Path, typer.Argument(help="JSON file with the network config ('-' = stdin)")]


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _summary(config: Any) -> dict[str, Any]:
    """The effective values, defaults filled in (what the daemon will use)."""
    out: dict[str, Any] = {}
    for key in ("network", "subnet_len", "subnet_min", "subnet_max", "enable_ipv4",
                "enable_ipv6", "ipv6_network", "ipv6_subnet_len", "ipv6_subnet_min",
                "ipv6_subnet_max", "backend_type"):  # fmt: skip
        value = getattr(config, key)
        out[key] = value if value is None or isinstance(value, bool | int) else str(value)
    return out


@app.command("show")
@with_etcd
async def show(
    *,
    etcd: EtcdFlags,
    effective: Annotated[
        bool, typer.Option("--effective", help="print the parsed config with defaults filled in")
    ] = False,
) -> None:
    """Print the config stored in etcd, byte for byte (or the effective values)."""
    from flannel.config import parse_config

    manager = etcd.manager()
    try:
        raw = await manager.get_config_raw()
    finally:
        await manager.close()
    if raw is None:
        raise CliError(
            f"no network config at {manager.config_key}: create one with `flannel config set FILE`"
        )
    if effective:
        typer.echo(json.dumps(_summary(parse_config(raw)), indent=2))
    else:
        sys.stdout.write(raw.decode(errors="replace").rstrip("\n") + "\n")


@app.command("set")
@with_etcd
async def set_config(file: FileArg, *, etcd: EtcdFlags) -> None:
    """Validate FILE and store it as the network config (nothing is stored if invalid)."""
    from flannel.config import parse_config

    raw = _read(file)
    config = parse_config(raw)
    manager = etcd.manager()
    try:
        await manager.set_config(raw)
    finally:
        await manager.close()
    typer.echo(
        f"stored network config at {manager.config_key}: Network {config.network}, "
        f"SubnetLen {config.subnet_len}, backend {config.backend_type}"
    )


@app.command("validate")
@handle_errors
def validate(file: FileArg) -> None:
    """Check FILE as the daemon would (no etcd needed); exit 1 with the problem if invalid."""
    from flannel.config import parse_config

    config = parse_config(_read(file))
    typer.echo(f"valid: {json.dumps(_summary(config))}")
    _note_backend(config.backend_type)


def _note_backend(backend_type: str) -> None:
    """Warn (stderr, exit 0) when this host cannot run the configured backend."""
    from flannel.plugins.host import PluginError, PluginHost

    try:
        PluginHost.load().provider(backend_type)
    except PluginError as exc:
        typer.echo(f"note: this host cannot run it: {exc}", err=True)
