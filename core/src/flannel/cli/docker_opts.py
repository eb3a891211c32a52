"""``flannel docker-opts``: docker daemon options from subnet.env (upstream's mk-docker-opts.sh).

Same options and output as the script: ``DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET"``,
``DOCKER_OPT_IPMASQ="--ip-masq=<not FLANNEL_IPMASQ>"`` (flannel masquerades, so docker must
not), ``DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU"`` (alphabetical, as ``set`` lists them), then the
combined ``DOCKER_OPTS="..."`` (prefixed with the key's value from the environment).
Differences: without ``-d`` the lines are printed; with ``-d FILE`` the file is replaced
(the script appends, duplicating lines on every run); a missing subnet.env is an error.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from flannel.cli.common import CliError, handle_errors
from flannel.options import DEFAULT_SUBNET_FILE


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (optionally quoted), as the script's ``source`` would see them."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CliError(
            f"{path} does not exist: start flanneld first, or pass -f with the subnet file"
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def docker_opts_lines(
    env: dict[str, str],
    *,
    individual: bool,
    combined: bool,
    ip_masq: bool = True,
    key: str = "DOCKER_OPTS",
    key_prefix: str = "",
) -> list[str]:
    """The lines mk-docker-opts.sh writes. Raises :class:`CliError` on a bad FLANNEL_IPMASQ."""
    if not individual and not combined:
        individual = combined = True
    opts: dict[str, str] = {}
    if env.get("FLANNEL_SUBNET"):
        opts["DOCKER_OPT_BIP"] = f"--bip={env['FLANNEL_SUBNET']}"
    if env.get("FLANNEL_MTU"):
        opts["DOCKER_OPT_MTU"] = f"--mtu={env['FLANNEL_MTU']}"
    masq = env.get("FLANNEL_IPMASQ", "")
    if masq and ip_masq:
        if masq == "true":
            opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=false"
        elif masq == "false":
            opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=true"
        else:
            raise CliError(f"Invalid value of FLANNEL_IPMASQ: {masq} (expected true or false)")
    lines: list[str] = []
    all_opts = f"{key_prefix} " if key_prefix else ""
    for name in sorted(opts):
        if individual:
            lines.append(f'{name}="{opts[name]}"')
        all_opts += f" {opts[name]}"
    if combined:
        lines.append(f'{key}="{all_opts}"')
    return lines


@handle_errors
def docker_opts(
    subnet_file: Annotated[
        Path, typer.Option("-f", help="flannel env file to read")
    ] = DEFAULT_SUBNET_FILE,
    docker_env: Annotated[
        Path | None, typer.Option("-d", help="docker env file to write (default: print)")
    ] = None,
    individual: Annotated[
        bool, typer.Option("-i", help="each option as its own DOCKER_OPT_* variable")
    ] = False,
    combined: Annotated[
        bool, typer.Option("-c", help="all options combined in one variable")
    ] = False,
    no_masq: Annotated[bool, typer.Option("-m", help="do not output --ip-masq")] = False,
    key: Annotated[str, typer.Option("-k", help="name of the combined variable")] = "DOCKER_OPTS",
) -> None:
    """Print docker daemon options (--bip, --mtu, --ip-masq) from flannel's subnet.env."""
    lines = docker_opts_lines(
        read_env_file(subnet_file),
        individual=individual,
        combined=combined,
        ip_masq=not no_masq,
        key=key,
        key_prefix=os.environ.get(key, ""),
    )
    text = "".join(line + "\n" for line in lines)
    if docker_env is None:
        sys.stdout.write(text)
        return
    try:
        tmp = docker_env.with_name(f".{docker_env.name}")
        tmp.write_text(text)
        tmp.replace(docker_env)
    except OSError as exc:
        raise CliError(f"cannot write {docker_env}: {exc.strerror or exc}") from None
