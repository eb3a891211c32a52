"""The daemon's options and THE flag table shared by ``flanneld`` and ``flannel run``.

Go ``flag`` syntax, as flanneld accepts it: ``-x`` and ``--x`` are the same flag, values go
as ``--x=v`` or ``--x v``, booleans as ``--x`` or ``--x=false``. Every flag is also read
from ``FLANNELD_<NAME>`` (upper case, ``-`` -> ``_``) when not given on the command line;
an empty variable is ignored and a repeatable flag takes one value from it. Unlike
flanneld, an unknown flag or a bad value is an error (:class:`UsageError`, exit 2).

This module is on the daemon's import path: stdlib only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ETCD_ENDPOINTS",
    "DEFAULT_ETCD_PREFIX",
    "DEFAULT_SUBNET_DIR",
    "DEFAULT_SUBNET_FILE",
    "FLAGS",
    "DaemonOptions",
    "Flag",
    "HelpRequested",
    "UsageError",
    "parse_args",
    "usage",
]

DEFAULT_ETCD_ENDPOINTS = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
DEFAULT_ETCD_PREFIX = "/coreos.com/network"
DEFAULT_SUBNET_FILE = Path("/run/flannel/subnet.env")
DEFAULT_SUBNET_DIR = Path("/run/flannel/networks")
ENV_PREFIX = "FLANNELD_"
MASK = "******"


class UsageError(ValueError):
    """A bad command line or ``FLANNELD_*`` value; the message names the flag and value."""


class HelpRequested(Exception):
    """``-h``/``--help`` was given: print :func:`usage` and exit 0."""


@dataclass
class DaemonOptions:
    """Everything the daemon is told from outside (flags and ``FLANNELD_*``)."""

    etcd_endpoints: list[str] = field(default_factory=lambda: list(DEFAULT_ETCD_ENDPOINTS))
    etcd_prefix: str = DEFAULT_ETCD_PREFIX
    etcd_keyfile: str = ""
    etcd_certfile: str = ""
    etcd_cafile: str = ""
    etcd_username: str = ""
    etcd_password: str = ""
    iface: list[str] = field(default_factory=list)
    iface_regex: list[str] = field(default_factory=list)
    iface_can_reach: str = ""
    public_ip: IPv4Address | None = None
    public_ipv6: IPv6Address | None = None
    subnet_file: Path = DEFAULT_SUBNET_FILE
    subnet_lease_renew_margin: int = 60
    """Minutes before expiry at which the lease is renewed."""
    ip_masq: bool = False
    iptables_resync: int = 5
    iptables_forward_rules: bool = True
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    v: int = 0
    version: bool = False
    lease_ttl: int = 86400
    """Seconds an acquired or renewed lease lives in etcd (flanneld hard-codes 24 h)."""
    log_format: str = "text"
    masq_backend: str = "auto"
    """How masquerade/forward rules are installed: auto, iptables or nftables."""
    vmodule: str = ""
    """klog's flag, accepted so flanneld command lines keep working; ignored."""
    log_backtrace_at: str = ""
    """klog's flag, accepted so flanneld command lines keep working; ignored."""
    listen: str = ""
    """Server mode (``host:port``): serve the subnet-manager API, do not join a network."""
    remote: str = ""
    """Client mode (``host:port``): use the ``--listen`` server there instead of etcd."""
    remote_keyfile: str = ""
    remote_certfile: str = ""
    remote_cafile: str = ""
    networks: list[str] = field(default_factory=list)
    """Multi-network mode: the networks to join (configs at ``<prefix>/<name>/config``)."""
    watch_networks: bool = False
    """Multi-network mode: join and leave networks as their configs appear and go."""
    subnet_dir: Path = DEFAULT_SUBNET_DIR
    """Multi-network mode: ``<subnet-dir>/<name>.env`` per network."""

    @property
    def multi_network(self) -> bool:
        """flanneld 0.7.1: ``--networks`` non-empty or ``--watch-networks`` set."""
        return bool(self.networks) or self.watch_networks

    @property
    def remote_tls(self) -> bool:
        return bool(self.remote_cafile or self.remote_certfile or self.remote_keyfile)

    def redacted(self) -> dict[str, Any]:
        """The options as a dict for logging: the etcd password is masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "etcd_password" and value:
                value = MASK
            out[f.name] = value
        return out

    def describe(self) -> str:
        """The non-default options as flags (``-iface=eth0 -ip-masq``), password masked."""
        defaults = DaemonOptions().redacted()
        parts: list[str] = []
        for flag in FLAGS:
            value = self.redacted()[flag.attr]
            if value == defaults[flag.attr]:
                continue
            for item in value if flag.repeatable else [value]:
                if isinstance(item, list):
                    item = ",".join(str(i) for i in item)
                elif isinstance(item, bool):
                    item = str(item).lower()
                parts.append(f"-{flag.name}={item}")
        return " ".join(parts) or "(all defaults)"

    def backend_view(self) -> dict[str, Any]:
        """Options a backend may read (``BackendContext.options``), keyed by flag name."""
        view = self.redacted()
        view.pop("etcd_password", None)
        return {name.replace("_", "-"): value for name, value in view.items()}


# -- value parsers -----------------------------------------------------------------------


def _str(text: str) -> str:
    return text


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError("expected an integer") from None


_TRUE = {"1", "t", "true", "T", "TRUE", "True"}
_FALSE = {"0", "f", "false", "F", "FALSE", "False"}


def _bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def _endpoints(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("expected a comma-separated list of URLs")
    for item in items:
        if "://" not in item:
            raise ValueError(f"{item!r} is not a URL like http://127.0.0.1:2379")
    return items


def _ipv4(text: str) -> IPv4Address | None:
    if text == "":
        return None
    try:
        return IPv4Address(text)
    except ValueError:
        raise ValueError("expected an IPv4 address") from None


def _ipv6(text: str) -> IPv6Address | None:
    if text == "":
        return None
    try:
        return IPv6Address(text)
    except ValueError:
        raise ValueError("expected an IPv6 address") from None


def _path(text: str) -> Path:
    if not text:
        raise ValueError("expected a file path")
    return Path(text)


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError("expected text or json")
    return text


def _masq_backend(text: str) -> str:
    if text not in ("auto", "iptables", "nftables"):
        raise ValueError("expected auto, iptables or nftables")
    return text


def _host_port(text: str) -> str:
    """``host:port`` (``tcp://`` and ``[v6]:port`` accepted), normalised to ``host:port``."""
    body = text.removeprefix("tcp://")
    if "://" in body:
        raise ValueError("bad listener scheme: use host:port or tcp://host:port")
    host, sep, port = body.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port, e.g. 198.18.0.1:8080")
    return f"{host or '0.0.0.0'}:{int(port)}"


def _remote(text: str) -> str:
    body = text.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, sep, port = body.rpartition(":")
    if not host or not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port of the --listen server, e.g. 198.18.0.1:8080")
    return body


_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _networks(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    for name in names:
        if not _NETWORK_NAME.fullmatch(name) or name in ("subnets", "config"):
            raise ValueError(
                f"{name!r} is not a network name: use letters, digits, '.', '_' or '-' "
                "(not 'config' or 'subnets')"
            )
    if len(set(names)) != len(names):
        raise ValueError("a network is named twice")
    return names


def _host_ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("expected an IP address") from None
    return text


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its name, the option it sets and how its value is parsed."""

    name: str
    attr: str
    parse: Callable[[str], Any]
    help: str
    is_bool: bool = False
    repeatable: bool = False
    metavar: str = "value"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


def _flag(name: str, parse: Callable[[str], Any], help: str, **kw: Any) -> Flag:
    return Flag(name, name.replace("-", "_"), parse, help, **kw)


FLAGS: tuple[Flag, ...] = (
    _flag("etcd-endpoints", _endpoints, "comma-separated list of etcd endpoints", metavar="urls"),
    _flag("etcd-prefix", _str, "etcd prefix of the network config and leases", metavar="path"),
    _flag("etcd-keyfile", _str, "client key file for etcd TLS", metavar="file"),
    _flag("etcd-certfile", _str, "client certificate file for etcd TLS", metavar="file"),
    _flag("etcd-cafile", _str, "CA file that verifies the etcd server", metavar="file"),
    _flag("etcd-username", _str, "etcd username (basic auth)", metavar="name"),
    _flag("etcd-password", _str, "etcd password (never logged)", metavar="secret"),
    _flag("iface", _str, "interface name or IP to use (repeatable, first match wins)",
          repeatable=True, metavar="name|ip"),
    _flag("iface-regex", _str, "regex matched against interface IPs, then names (repeatable)",
          repeatable=True, metavar="regex"),
    _flag("iface-can-reach", _str, "use the interface that routes to this IP", metavar="ip"),
    _flag("public-ip", _ipv4, "IPv4 address published to other hosts", metavar="ip"),
    _flag("public-ipv6", _ipv6, "IPv6 address published to other hosts", metavar="ip"),
    _flag("subnet-file", _path, "file to write the subnet environment to", metavar="file"),
    _flag("subnet-lease-renew-margin", _int, "renew the lease this many minutes before expiry",
          metavar="minutes"),
    _flag("ip-masq", _bool, "masquerade traffic leaving the flannel network", is_bool=True),
    _flag("iptables-resync", _int, "seconds between iptables rule checks", metavar="seconds"),
    _flag("iptables-forward-rules", _bool, "add FORWARD accept rules for the network",
          is_bool=True),
    _flag("healthz-ip", _host_ip, "address the health server listens on", metavar="ip"),
    _flag("healthz-port", _int, "port of the health server (0 = off)", metavar="port"),
    _flag("v", _int, "log verbosity (0 info, 1+ debug)", metavar="level"),
    _flag("version", _bool, "print the version and exit", is_bool=True),
    _flag("lease-ttl", _int, "seconds an acquired or renewed lease lives", metavar="seconds"),
    _flag("log-format", _log_format, "log line format: text or json", metavar="text|json"),
    _flag("vmodule", _str, "accepted for flanneld compatibility; ignored", metavar="spec"),
    _flag("log_backtrace_at", _str, "accepted for flanneld compatibility; ignored",
          metavar="file:line"),
    _flag("masq-backend", _masq_backend, "install masquerade/forward rules with: auto, "
          "iptables or nftables", metavar="name"),
    _flag("listen", _host_port, "server mode: serve the subnet-manager API on host:port "
          "(no network join)", metavar="host:port"),
    _flag("remote", _remote, "client mode: use the --listen server at host:port instead "
          "of etcd", metavar="host:port"),
    _flag("remote-keyfile", _str, "TLS key (server: its own; client: its client key)",
          metavar="file"),
    _flag("remote-certfile", _str, "TLS certificate (server: its own; client: presented)",
          metavar="file"),
    _flag("remote-cafile", _str, "CA (server: client certs required; client: verifies "
          "the server)", metavar="file"),
    _flag("networks", _networks, "multi-network mode: comma-separated networks to join",
          metavar="names"),
    _flag("watch-networks", _bool, "multi-network mode: join/leave networks as their "
          "configs appear/disappear", is_bool=True),
    _flag("subnet-dir", _path, "multi-network mode: directory of <network>.env files",
          metavar="dir"),
)  # fmt: skip

_BY_NAME = {f.name: f for f in FLAGS}
_HELP_NAMES = {"h", "help"}


_KUBE = "kube subnet manager mode is not supported: use etcd (-etcd-endpoints)"
UNSUPPORTED = {
    "kube-subnet-mgr": _KUBE, "kube-api-url": _KUBE, "kubeconfig-file": _KUBE,
    "kube-annotation-prefix": _KUBE, "net-config-path": _KUBE,
    "set-node-network-unavailable": _KUBE,
}  # fmt: skip
"""flanneld flags this implementation deliberately lacks, with what to do instead."""


def _lookup(name: str) -> Flag:
    flag = _BY_NAME.get(name)
    if flag is None:
        if name in UNSUPPORTED:
            raise UsageError(f"flag -{name} is not supported: {UNSUPPORTED[name]}")
        raise UsageError(f"unknown flag: -{name} (see --help for the list of flags)")
    return flag


def _parse_value(flag: Flag, text: str, source: str) -> Any:
    try:
        return flag.parse(text)
    except ValueError as exc:
        raise UsageError(f"invalid value {text!r} for {source}: {exc}") from None


def _split(arg: str) -> tuple[str, str | None]:
    body = arg[2:] if arg.startswith("--") else arg[1:]
    if not body or body.startswith("-") or body.startswith("="):
        raise UsageError(f"bad flag syntax: {arg}")
    name, sep, value = body.partition("=")
    return name, (value if sep else None)


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> DaemonOptions:
    """Parse a flanneld command line plus ``FLANNELD_*`` environment into options.

    Raises :class:`UsageError` (exit 2) or :class:`HelpRequested` (print usage, exit 0).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if i < len(args):
                raise UsageError(f"unexpected argument: {args[i]!r} (flanneld takes only flags)")
            break
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"unexpected argument: {arg!r} (flanneld takes only flags)")
        name, value = _split(arg)
        if name in _HELP_NAMES:
            raise HelpRequested()
        flag = _lookup(name)
        if flag.is_bool:
            parsed = _parse_value(flag, "true" if value is None else value, f"-{name}")
        else:
            if value is None:
                if i >= len(args):
                    raise UsageError(f"flag needs a value: -{name}")
                value = args[i]
                i += 1
            parsed = _parse_value(flag, value, f"-{name}")
        if flag.repeatable:
            values.setdefault(flag.attr, []).append(parsed)
        else:
            values[flag.attr] = parsed
    if values.get("version"):
        return DaemonOptions(version=True)
    for flag in FLAGS:
        if flag.attr in values:
            continue
        text = env.get(flag.env, "")
        if text == "":
            continue
        parsed = _parse_value(flag, text, f"environment variable {flag.env}")
        values[flag.attr] = [parsed] if flag.repeatable else parsed
    opts = DaemonOptions(**values)
    validate(opts)
    return opts


def validate(opts: DaemonOptions) -> None:
    """Check values that are valid one by one but not together; raises :class:`UsageError`."""
    if opts.lease_ttl < 60:
        raise UsageError(f"invalid -lease-ttl {opts.lease_ttl}: use at least 60 seconds")
    margin = opts.subnet_lease_renew_margin
    if margin < 1 or margin * 60 >= opts.lease_ttl:
        raise UsageError(
            f"invalid -subnet-lease-renew-margin {margin}: must be at least 1 minute and less "
            f"than the lease TTL ({opts.lease_ttl} s = {opts.lease_ttl / 60:g} minutes)"
        )
    if not 0 <= opts.healthz_port <= 65535:
        raise UsageError(f"invalid -healthz-port {opts.healthz_port}: use 0 (off) to 65535")
    if opts.iptables_resync < 1:
        raise UsageError(f"invalid -iptables-resync {opts.iptables_resync}: use at least 1")
    if opts.v < 0:
        raise UsageError(f"invalid -v {opts.v}: use 0 or more")
    if bool(opts.etcd_certfile) != bool(opts.etcd_keyfile):
        raise UsageError(
            "-etcd-certfile and -etcd-keyfile go together: give both for client TLS, or neither"
        )
    _validate_remote(opts)


def _validate_remote(opts: DaemonOptions) -> None:
    if opts.listen and opts.remote:
        raise UsageError(
            f"-listen={opts.listen} and -remote={opts.remote} are mutually exclusive: a host "
            "is either the server or a client"
        )
    if bool(opts.remote_certfile) != bool(opts.remote_keyfile):
        raise UsageError("-remote-certfile and -remote-keyfile go together: give both, or neither")
    if opts.listen and opts.remote_cafile and not opts.remote_certfile:
        raise UsageError(
            "-remote-cafile on a -listen server needs -remote-certfile and -remote-keyfile: "
            "the server must present its own certificate before it can check clients'"
        )
    if not (opts.listen or opts.remote) and opts.remote_tls:
        raise UsageError(
            "-remote-certfile/-remote-keyfile/-remote-cafile only apply with -listen or -remote"
        )


def usage(prog: str) -> str:
    """The help text: every flag with its environment variable and default."""
    defaults = DaemonOptions()
    lines = [f"Usage: {prog} [flags]", "", "Flags (also from FLANNELD_<NAME>):"]
    for flag in FLAGS:
        head = f"  -{flag.name}" if flag.is_bool else f"  -{flag.name} {flag.metavar}"
        default = getattr(defaults, flag.attr)
        if isinstance(default, list):
            default = ",".join(str(d) for d in default)
        extra = f" (default {default})" if default not in ("", None, [], False) else ""
        lines.append(head)
        lines.append(f"        {flag.help}{extra} [{flag.env}]")
    lines += [
        "",
        "Exit status: 0 stopped by SIGTERM/SIGINT, 1 fatal error (bad network config at",
        "startup, unknown or broken backend, no usable interface), 2 usage error.",
    ]
    return "\n".join(lines) + "\n"
