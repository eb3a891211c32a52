"""``flannel doctor``: check that this host can run flannel, and say what is wrong.

Checks (each gives ok, warn or fail with a one-line detail):

- etcd: every ``--etcd-endpoints`` entry (TLS/auth flags as the daemon uses them)
- config: ``<prefix>/config`` from etcd (or ``--net-config FILE``) through ``parse_config``
- kernel: what the configured backend needs (vxlan/ipip/wireguard module, /dev/net/tun),
  and IPv4 forwarding
- interface: the external interface the daemon would pick, its MTU and the backend's MTU
- leftovers: flannel devices, routes through them, masquerade chains/tables
- firewall: iptables (variant, --random-fully) and nft availability

Pure logic and I/O only (no typer/rich): :mod:`flannel.doctor_cli` renders it.
``exit_code(checks)`` is 1 when any check failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flannel.config import ConfigError, NetworkConfig, parse_config
from flannel.ipmasq.iptables import IptablesDriver
from flannel.ipmasq.nftables import NftablesDriver, table_name
from flannel.ipmasq.runner import Runner, run_command

__all__ = ["Check", "DoctorOptions", "exit_code", "run_checks", "to_json"]

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"

# Encapsulation overhead per backend (flanneld's MTU arithmetic).
MTU_OVERHEAD = {"vxlan": 50, "udp": 28, "ipip": 20, "wireguard": 80, "ipsec": 77}
KERNEL_MODULES = {"vxlan": "vxlan", "ipip": "ipip", "wireguard": "wireguard"}
DEVICE_PREFIXES = ("flannel.", "flannel-v6.", "flannel0", "flannel-wg", "flannel-ipip")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorOptions:
    """The daemon's flags that matter here (same names and meaning)."""

    etcd_endpoints: list[str] = field(
        default_factory=lambda: ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    )
    etcd_prefix: str = "/coreos.com/network"
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    etcd_username: str = ""
    etcd_password: str = field(default="", repr=False)
    iface: list[str] = field(default_factory=list)
    iface_regex: list[str] = field(default_factory=list)
    net_config: Path | None = None
    """Read the network config from this file instead of etcd (kube-style net-conf.json)."""
    ip_masq: bool = False
    """Fail (not warn) when neither iptables nor nft is usable."""
    timeout: float = 3.0


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def to_json(checks: list[Check]) -> str:
    return json.dumps(
        {"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}, indent=2
    )


async def run_checks(opts: DoctorOptions, runner: Runner = run_command) -> list[Check]:
    """Run every check; never raises for a problem it can describe."""
    checks: list[Check] = []
    etcd_check, raw = await check_etcd(opts)
    checks.append(etcd_check)
    config_check, config = check_config(opts, raw, etcd_check)
    checks.append(config_check)
    checks.append(check_kernel(config))
    checks.append(check_forwarding())
    checks.append(await asyncio.to_thread(check_interface, opts, config))
    checks.append(await check_leftovers(runner))
    checks.append(await check_firewall(opts, runner))
    return checks


# -- etcd ---------------------------------------------------------------------------------


async def check_etcd(opts: DoctorOptions) -> tuple[Check, bytes | None]:
    """Reach each endpoint; read the config key from the first that answers."""
    if opts.net_config is not None:
        return Check("etcd", OK, "not used (--net-config given)"), None
    try:
        from flannel.etcd import EtcdClientConfig, EtcdConnection
    except ImportError as exc:  # pragma: no cover - packaging problem
        return Check("etcd", FAIL, f"etcd client unavailable: {exc}"), None
    key = opts.etcd_prefix.rstrip("/") + "/config"
    results: dict[str, str] = {}
    raw: bytes | None = None
    reached = False
    for endpoint in opts.etcd_endpoints:
        try:
            config = EtcdClientConfig.from_flags(
                [endpoint],
                ca_file=opts.etcd_cafile,
                cert_file=opts.etcd_certfile,
                key_file=opts.etcd_keyfile,
                username=opts.etcd_username,
                password=opts.etcd_password,
            )
            config = _with_timeouts(config, opts.timeout)
        except ValueError as exc:
            results[endpoint] = f"bad settings: {exc}"
            continue
        conn = EtcdConnection(config)
        try:
            value = await asyncio.wait_for(_get(conn, key), opts.timeout * 2)
            reached = True
            results[endpoint] = "reachable"
            if raw is None and value is not None:
                raw = value
        except Exception as exc:  # report any failure as this endpoint's problem
            results[endpoint] = _short(exc)
        finally:
            await _close(conn)
    detail = "; ".join(f"{ep}: {res}" for ep, res in results.items())
    if not reached:
        failed = Check("etcd", FAIL, f"no etcd endpoint answers: {detail}")
        failed.data["endpoints"] = results
        return failed, None
    status = OK if all(r == "reachable" for r in results.values()) else WARN
    data: dict[str, Any] = {
        "endpoints": results,
        "config_key": key,
        "config_found": raw is not None,
    }
    return Check("etcd", status, detail, data), (raw if raw is not None else b"")


def _with_timeouts(config: Any, timeout: float) -> Any:
    import dataclasses

    return dataclasses.replace(config, dial_timeout=timeout, request_timeout=timeout)


async def _get(conn: Any, key: str) -> bytes | None:
    async def fetch(client: Any) -> Any:
        return await client.get(key.encode())

    result = await conn.call(f"get {key}", fetch)
    if result is None:
        return None
    value = getattr(result, "value", result)
    return bytes(value) if value is not None else None


async def _close(conn: Any) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(conn, "close", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a failed channel must not hide the real result
            log.debug("closing etcd connection failed", exc_info=True)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


# -- config -------------------------------------------------------------------------------


def check_config(
    opts: DoctorOptions, raw: bytes | None, etcd: Check
) -> tuple[Check, NetworkConfig | None]:
    where = ""
    if opts.net_config is not None:
        where = str(opts.net_config)
        try:
            raw = opts.net_config.read_bytes()
        except OSError as exc:
            return Check("config", FAIL, f"cannot read --net-config {where}: {exc.strerror}"), None
    else:
        where = f"etcd {opts.etcd_prefix.rstrip('/')}/config"
        if etcd.status == FAIL:
            return Check("config", FAIL, f"not checked: etcd unreachable ({where})"), None
        if not raw:
            hint = 'create it, e.g. etcdctl put <prefix>/config \'{"Network":"10.244.0.0/16"}\''
            return Check("config", FAIL, f"no network config at {where}: {hint}"), None
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        return Check("config", FAIL, f"{where}: {exc}"), None
    except NotImplementedError:
        return Check("config", WARN, "config parser not available in this build"), None
    parts = []
    if config.enable_ipv4 and config.network is not None:
        parts.append(f"Network {config.network} SubnetLen {config.subnet_len}")
    if config.enable_ipv6 and config.ipv6_network is not None:
        parts.append(f"IPv6Network {config.ipv6_network} IPv6SubnetLen {config.ipv6_subnet_len}")
    parts.append(f"backend {config.backend_type}")
    data = {
        "source": where,
        "backend": config.backend_type,
        "network": str(config.network) if config.network else None,
    }
    return Check("config", OK, f"{where}: " + ", ".join(parts), data), config


# -- kernel -------------------------------------------------------------------------------


def module_available(name: str, root: Path = Path("/")) -> str | None:
    """'loaded', 'built in', 'loadable' or None."""
    if (root / "sys/module" / name).exists():
        return "loaded"
    release = platform.release()
    moddir = root / "lib/modules" / release
    for listing, verdict in (("modules.builtin", "built in"), ("modules.dep", "loadable")):
        try:
            text = (moddir / listing).read_text()
        except OSError:
            continue
        if f"/{name}.ko" in text:
            return verdict
    return None


def check_kernel(config: NetworkConfig | None) -> Check:
    backend = config.backend_type if config is not None else None
    needs: list[str] = []
    problems: list[str] = []
    found: list[str] = []
    wanted = [backend] if backend else ["vxlan", "udp"]
    for kind in wanted:
        if kind in KERNEL_MODULES:
            mod = KERNEL_MODULES[kind]
            needs.append(f"{mod} module")
            state = module_available(mod)
            (found if state else problems).append(f"{mod}: {state or 'not available'}")
        elif kind == "udp":
            needs.append("/dev/net/tun")
            tun = Path("/dev/net/tun")
            (found if tun.exists() else problems).append(
                "/dev/net/tun: present" if tun.exists() else "/dev/net/tun: missing (modprobe tun)"
            )
    label = f"backend {backend}" if backend else "vxlan/udp (no config)"
    if not needs:
        return Check("kernel", OK, f"{label}: needs no extra kernel support")
    if problems:
        status = FAIL if backend else WARN
        return Check("kernel", status, f"{label}: " + "; ".join(problems + found))
    return Check("kernel", OK, f"{label}: " + "; ".join(found))


def check_forwarding() -> Check:
    try:
        value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    except OSError as exc:
        return Check("forwarding", WARN, f"cannot read net.ipv4.ip_forward: {exc.strerror}")
    if value == "1":
        return Check("forwarding", OK, "net.ipv4.ip_forward = 1")
    return Check(
        "forwarding",
        WARN,
        "net.ipv4.ip_forward = 0: pods cannot reach other hosts; "
        "run `sysctl -w net.ipv4.ip_forward=1`",
    )


# -- interface ----------------------------------------------------------------------------


def check_interface(opts: DoctorOptions, config: NetworkConfig | None) -> Check:
    from flannel.iface import InterfaceError, lookup_ext_iface

    ipv4 = config.enable_ipv4 if config is not None else True
    ipv6 = config.enable_ipv6 if config is not None else False
    try:
        ext = lookup_ext_iface(
            ifaces=opts.iface, iface_regexes=opts.iface_regex, ipv4=ipv4, ipv6=ipv6
        )
    except (InterfaceError, ValueError, OSError) as exc:
        return Check("interface", FAIL, _short(exc))
    backend = config.backend_type if config is not None else None
    overhead = MTU_OVERHEAD.get(backend or "", 0)
    mtu = ext.mtu - overhead
    addr = " ".join(str(a) for a in (ext.iface_addr, ext.iface_v6_addr) if a)
    detail = f"{ext.name} ({addr}) mtu {ext.mtu}"
    if backend:
        detail += f", pod MTU with {backend}: {mtu}"
    data = {"name": ext.name, "mtu": ext.mtu, "pod_mtu": mtu, "address": addr}
    if mtu < 576:
        return Check("interface", FAIL, detail + ": too small for IPv4 (576)", data)
    if ipv6 and mtu < 1280:
        return Check("interface", FAIL, detail + ": too small for IPv6 (1280)", data)
    return Check("interface", OK, detail, data)


# -- leftovers ----------------------------------------------------------------------------


async def check_leftovers(runner: Runner) -> Check:
    links = await runner(["ip", "-j", "link", "show"], None)
    if links.returncode != 0:
        return Check("leftovers", WARN, f"cannot list links: {links.stderr.strip()}")
    devices = [
        link["ifname"]
        for link in json.loads(links.stdout or "[]")
        if str(link.get("ifname", "")).startswith(DEVICE_PREFIXES)
    ]
    routes: list[str] = []
    for dev in devices:
        for family in ("-4", "-6"):
            out = await runner(["ip", family, "-j", "route", "show", "dev", dev], None)
            if out.returncode == 0:
                routes += [
                    str(r.get("dst"))
                    for r in json.loads(out.stdout or "[]")
                    if r.get("protocol") != "kernel"  # link-local and connected routes
                ]
    found = [f"device {d}" for d in devices]
    if routes:
        found.append(f"{len(routes)} route(s) via them")
    chains = await _masq_leftovers(runner)
    found += chains
    data = {"devices": devices, "routes": routes, "firewall": chains}
    if not found:
        return Check("leftovers", OK, "no flannel devices, routes or masquerade rules", data)
    return Check(
        "leftovers",
        WARN,
        ", ".join(found) + ": expected while flanneld runs; "
        "otherwise left from an earlier run (ip link del DEV; flannel cleans "
        "its rules on exit)",
        data,
    )


async def _masq_leftovers(runner: Runner) -> list[str]:
    found: list[str] = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = await runner([tool], None)
        if out.returncode == 0:
            for chain in ("FLANNEL-POSTRTG", "FLANNEL-FWD"):
                if f":{chain} " in out.stdout:
                    found.append(f"{tool.split('-')[0]} chain {chain}")
    out = await runner(["nft", "list", "tables"], None)
    if out.returncode == 0:
        for family in (4, 6):
            if table_name(family) in out.stdout:
                found.append(f"nft table {table_name(family)}")
    return found


# -- firewall -----------------------------------------------------------------------------


async def check_firewall(opts: DoctorOptions, runner: Runner) -> Check:
    ipt = IptablesDriver(runner)
    nft = NftablesDriver(runner)
    parts: list[str] = []
    have_ipt = await ipt.available()
    have_nft = await nft.available()
    if have_ipt:
        version = await runner(["iptables", "--version"], None)
        text = version.stdout.strip() or version.stderr.strip()
        rf = "with" if await ipt.random_fully() else "without"
        parts.append(f"{text} ({rf} --random-fully)")
    else:
        parts.append("iptables: not installed")
    if have_nft:
        version = await runner(["nft", "--version"], None)
        parts.append(version.stdout.strip())
    else:
        parts.append("nft: not installed")
    data = {"iptables": have_ipt, "nftables": have_nft}
    if not (have_ipt or have_nft):
        status = FAIL if opts.ip_masq else WARN
        return Check(
            "firewall",
            status,
            "; ".join(parts) + ": --ip-masq cannot work; install iptables or nftables",
            data,
        )
    return Check("firewall", OK, "; ".join(parts), data)


def running_as_root() -> bool:
    return os.geteuid() == 0
