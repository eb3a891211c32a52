"""The daemon's flag table: Go flag syntax, FLANNELD_* environment, errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from flannel.options import (
    FLAGS,
    DaemonOptions,
    HelpRequested,
    UsageError,
    parse_args,
    usage,
)


def test_defaults_match_flanneld() -> None:
    opts = parse_args([], env={})
    assert opts.etcd_endpoints == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert opts.etcd_prefix == "/coreos.com/network"
    assert opts.subnet_file == Path("/run/flannel/subnet.env")
    assert opts.subnet_lease_renew_margin == 60
    assert opts.ip_masq is False and opts.iptables_forward_rules is True
    assert opts.iptables_resync == 5 and opts.healthz_port == 0 and opts.lease_ttl == 86400


def test_go_style_single_dash_and_equals() -> None:
    opts = parse_args(
        ["-etcd-endpoints=http://a:2379,http://b:2379", "-etcd-prefix=/x/network",
         "--iface", "eth0", "-iface=198.18.0.1", "--ip-masq", "-v", "3",
         "--public-ip=198.18.0.7", "-iptables-forward-rules=false"],
        env={},
    )  # fmt: skip
    assert opts.etcd_endpoints == ["http://a:2379", "http://b:2379"]
    assert opts.etcd_prefix == "/x/network"
    assert opts.iface == ["eth0", "198.18.0.1"]
    assert opts.ip_masq is True and opts.iptables_forward_rules is False
    assert opts.v == 3 and opts.public_ip == IPv4Address("198.18.0.7")


def test_klog_flags_are_accepted_for_compatibility() -> None:
    opts = parse_args(["-v=2", "-vmodule=main=3", "-log_backtrace_at=main.go:10"], env={})
    assert opts.v == 2 and opts.vmodule == "main=3"


@pytest.mark.parametrize("value,expected", [("true", True), ("1", True), ("F", False),
                                            ("false", False), ("0", False)])  # fmt: skip
def test_bool_values_as_go_parses_them(value: str, expected: bool) -> None:
    assert parse_args([f"--ip-masq={value}"], env={}).ip_masq is expected


def test_env_fills_flags_not_given_and_cli_wins() -> None:
    env = {
        "FLANNELD_ETCD_PREFIX": "/env/network",
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_IFACE": "eth1,eth2",  # one value from env, not split
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30",
        "FLANNELD_PUBLIC_IP": "",  # empty is ignored
        "FLANNELD_V": "2",
    }
    opts = parse_args(["--etcd-prefix=/cli/network"], env=env)
    assert opts.etcd_prefix == "/cli/network"
    assert opts.ip_masq is True
    assert opts.iface == ["eth1,eth2"]
    assert opts.subnet_lease_renew_margin == 30
    assert opts.public_ip is None and opts.v == 2


@pytest.mark.parametrize(
    "argv,env,message",
    [
        (["--bogus"], {}, "unknown flag: -bogus"),
        (["--kube-subnet-mgr"], {}, "flag -kube-subnet-mgr is not supported: kube subnet"),
        (["-listen=:8080", "-remote=10.0.0.1:8080"], {}, "are mutually exclusive"),
        (["-iface"], {}, "flag needs a value: -iface"),
        (["--ip-masq=yes"], {}, "invalid value 'yes' for -ip-masq"),
        (["--public-ip=1.2.3"], {}, "invalid value '1.2.3' for -public-ip: expected an IPv4"),
        (["--subnet-lease-renew-margin=1440"], {}, "must be at least 1 minute and less than"),
        (["--subnet-lease-renew-margin=0"], {}, "-subnet-lease-renew-margin 0"),
        (["--lease-ttl=600", "--subnet-lease-renew-margin=10"], {}, "less than the lease TTL"),
        (["--log-format=xml"], {}, "expected text or json"),
        (["extra"], {}, "unexpected argument: 'extra'"),
        (["--etcd-certfile=/c.pem"], {}, "-etcd-certfile and -etcd-keyfile go together"),
        ([], {"FLANNELD_HEALTHZ_PORT": "eighty"},
         "invalid value 'eighty' for environment variable FLANNELD_HEALTHZ_PORT"),
    ],
)  # fmt: skip
def test_usage_errors_name_the_flag_and_value(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as err:
        parse_args(argv, env=env)
    assert message in str(err.value)


def test_help_and_version() -> None:
    with pytest.raises(HelpRequested):
        parse_args(["-h"], env={})
    with pytest.raises(HelpRequested):
        parse_args(["--help"], env={})
    # --version wins over everything else, even a bad env value
    assert parse_args(["--version"], env={"FLANNELD_V": "x"}).version


def test_every_flag_is_in_usage_with_its_env_var() -> None:
    text = usage("flanneld")
    for flag in FLAGS:
        assert f"-{flag.name}" in text and flag.env in text


def test_password_is_masked_in_dumps() -> None:
    opts = DaemonOptions(etcd_password="s3cret", etcd_username="flannel")
    assert "s3cret" not in repr(opts.redacted())
    assert "s3cret" not in repr(opts.backend_view())
    assert opts.redacted()["etcd_username"] == "flannel"


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flannel", *argv], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


def test_unknown_flag_exits_2_with_one_line() -> None:
    done = run_cli("run", "-etcd-endpointz=http://127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "flannel run: unknown flag: -etcd-endpointz (see --help for the list of flags)"
    )


def test_bad_env_value_exits_2() -> None:
    import os

    env = dict(os.environ, FLANNELD_IP_MASQ="maybe")
    done = run_cli("run", env=env)
    assert done.returncode == 2
    assert "FLANNELD_IP_MASQ" in done.stderr and "maybe" in done.stderr


def test_help_exits_0_and_version_prints_to_stderr() -> None:
    done = run_cli("run", "-help")
    assert done.returncode == 0 and "-etcd-endpoints" in done.stderr
    done = run_cli("run", "--version")
    assert done.returncode == 0 and done.stderr.startswith("flannel ")
    done = run_cli("-v", "run", "--version")  # through the typer app
    assert done.returncode == 0 and done.stderr.startswith("flannel ")


def test_daemon_import_path_is_lean() -> None:
    code = (
        "import sys\n"
        "import flannel.cli.entry, flannel.cli.flanneld, flannel.daemon, flannel.network\n"
        "import flannel.plugins.host, flannel.plugins.alloc, flannel.etcd_manager\n"
        "import flannel.subnetenv, flannel.iface, flannel.logs, flannel.health\n"
        "import flannel.sdnotify, flannel.ipmasq\n"
        "bad = sorted(m for m in ('typer', 'rich', 'pydantic', 'click') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_describe_lists_non_defaults_as_flags_with_password_masked() -> None:
    opts = parse_args(
        ["--iface=eth0", "-iface", "eth1", "--ip-masq", "--etcd-username=u",
         "--etcd-password=s3cret", "--iptables-forward-rules=false"],
        env={},
    )  # fmt: skip
    text = opts.describe()
    assert text == (
        "-etcd-username=u -etcd-password=****** -iface=eth0 -iface=eth1 -ip-masq=true "
        "-iptables-forward-rules=false"
    )
    assert parse_args([], env={}).describe() == "(all defaults)"


def test_health_port_in_use_is_fatal_exit_1() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # fails before any etcd or network work: the port is taken
        done = run_cli(
            "run", "--etcd-endpoints=http://127.0.0.1:9", "--healthz-ip=127.0.0.1",
            f"--healthz-port={port}",
        )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("flannel run: error: cannot listen on --healthz-ip 127.0.0.1")


def test_flannel_run_never_imports_typer() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flannel", "run", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "flannel.cli.flanneld" in imported
    assert not imported & {"typer", "rich", "pydantic", "flannel.cli.app"}
