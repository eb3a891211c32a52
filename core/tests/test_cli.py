"""``flannel`` commands against a real etcd: config, leases, backends, version, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from flannel.cli.app import run_app
from flannel.etcd import EtcdClientConfig
from flannel.etcd_manager import EtcdSubnetManager
from flannel.lease import LeaseAttrs
from flannel.testing.etcd import EtcdServer, free_port

pytestmark = pytest.mark.timeout(120)

CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}'


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_app(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def ep(etcd: EtcdServer) -> str:
    return f"--etcd-endpoints={etcd.endpoint}"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.json"
    path.write_text(CONFIG)
    return path


def test_config_validate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"network":"10.3.0.0/16"}')
    code, out, _ = cli(capsys, "config", "validate", str(good))
    assert code == 0
    summary = json.loads(out.split("valid: ", 1)[1])
    assert summary["subnet_min"] == "10.3.1.0" and summary["subnet_len"] == 24
    assert summary["backend_type"] == "udp"
    bad = tmp_path / "bad.json"
    bad.write_text('{"Network":"10.3.0.0/16","SubnetLen":31}')
    code, out, err = cli(capsys, "config", "validate", str(bad))
    assert code == 1 and out == ""
    assert err.startswith("flannel: error: ") and "SubnetLen" in err and "31" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "config", "validate", str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read" in err and "missing.json" in err


def test_config_set_and_show(
    capsys: pytest.CaptureFixture[str], etcd_server: EtcdServer, config_file: Path, tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "config", "show", ep(etcd_server))
    assert code == 1 and "no network config at /coreos.com/network/config" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}')
    code, _, err = cli(capsys, "config", "set", str(bad), ep(etcd_server))
    assert code == 1 and "SubnetMin" in err
    code, _, _ = cli(capsys, "config", "show", ep(etcd_server))
    assert code == 1  # nothing was stored
    code, out, _ = cli(capsys, "config", "set", str(config_file), ep(etcd_server))
    assert code == 0 and "stored network config" in out
    code, out, _ = cli(capsys, "config", "show", ep(etcd_server))
    assert code == 0 and out == CONFIG + "\n"
    code, out, _ = cli(capsys, "config", "show", "--effective", ep(etcd_server))
    assert code == 0
    assert json.loads(out)["subnet_max"] == "10.244.255.0"
    # another prefix is another network
    code, _, err = cli(capsys, "config", "show", ep(etcd_server), "--etcd-prefix=/other/network")
    assert code == 1 and "/other/network/config" in err
    done = subprocess.run(
        ["etcdctl", f"--endpoints={etcd_server.endpoint}", "get", "--print-value-only",
         "/coreos.com/network/config"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == CONFIG


async def _acquire(etcd: EtcdServer, ip: str) -> str:
    manager = EtcdSubnetManager(EtcdClientConfig.from_flags(etcd.endpoint), lease_ttl=600)
    try:
        config = await manager.get_network_config()
        lease = await manager.acquire_lease(config, LeaseAttrs(IPv4Address(ip)))
        return str(lease.subnet)
    finally:
        await manager.close()


def test_leases_list_reserve_unreserve(
    capsys: pytest.CaptureFixture[str], etcd_server: EtcdServer, config_file: Path
) -> None:
    assert cli(capsys, "config", "set", str(config_file), ep(etcd_server))[0] == 0
    code, out, _ = cli(capsys, "leases", "list", "--json", ep(etcd_server))
    assert code == 0 and json.loads(out) == []
    subnet = asyncio.run(_acquire(etcd_server, "198.18.0.1"))
    code, _, _ = cli(capsys, "leases", "reserve", "10.244.200.0/24", "198.18.0.9", ep(etcd_server))
    assert code == 0
    code, out, _ = cli(capsys, "leases", "list", "--json", ep(etcd_server))
    rows = {row["subnet"]: row for row in json.loads(out)}
    assert set(rows) == {subnet, "10.244.200.0/24"}
    assert rows[subnet]["public_ip"] == "198.18.0.1" and not rows[subnet]["reservation"]
    assert 0 < rows[subnet]["expires_in"] <= 600
    assert rows["10.244.200.0/24"]["reservation"] and rows["10.244.200.0/24"]["expires_in"] is None
    code, out, _ = cli(capsys, "leases", "list", ep(etcd_server))
    assert code == 0 and "(reserved)" in out and "198.18.0.9" in out and subnet in out
    # a subnet held by another host cannot be reserved
    code, _, err = cli(capsys, "leases", "reserve", subnet, "198.18.0.77", ep(etcd_server))
    assert code == 1 and "already leased to 198.18.0.1" in err
    code, _, err = cli(capsys, "leases", "reserve", "10.244.1.0/33", "198.18.0.9", ep(etcd_server))
    assert code == 1 and "bad subnet '10.244.1.0/33'" in err
    code, _, err = cli(capsys, "leases", "unreserve", subnet, ep(etcd_server))
    assert code == 1 and "not a reservation" in err
    code, _, _ = cli(capsys, "leases", "unreserve", "10.244.200.0/24", ep(etcd_server))
    assert code == 0
    code, out, _ = cli(capsys, "leases", "list", "--json", ep(etcd_server))
    assert [row["subnet"] for row in json.loads(out)] == [subnet]


def flannel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flannel", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_etcd_flags_from_env_and_cli_wins(etcd_server: EtcdServer, config_file: Path) -> None:
    env = {"FLANNELD_ETCD_ENDPOINTS": etcd_server.endpoint, "FLANNELD_ETCD_PREFIX": "/env/net"}
    done = flannel("config", "set", str(config_file), env=env)
    assert done.returncode == 0, done.stderr
    assert "/env/net/config" in done.stdout
    done = flannel("config", "show", "--etcd-prefix=/coreos.com/network", env=env)
    assert done.returncode == 1 and "/coreos.com/network/config" in done.stderr
    done = flannel("config", "show", env=env)
    assert done.returncode == 0 and done.stdout == CONFIG + "\n"


def test_unreachable_etcd_is_one_line_exit_1() -> None:
    done = flannel("leases", "list", f"--etcd-endpoints=http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.startswith("flannel: error: ") and "etcd" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_usage_errors_exit_2() -> None:
    assert flannel("leases", "list", "--no-such-flag").returncode == 2
    assert flannel("nonsense").returncode == 2
    assert flannel("leases", "reserve", "10.244.1.0/24").returncode == 2  # missing PUBLIC_IP


def test_backends_list_json_and_version() -> None:
    done = flannel("backends", "list", "--json")
    assert done.returncode == 0
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    assert plugins["alloc"]["status"] == "ok" and plugins["alloc"]["types"] == ["alloc"]
    assert plugins["alloc"]["distribution"] == "flannel-core"
    done = flannel("backends", "list", "--json", env={"FLANNEL_LOAD_PLUGINS": "alloc"})
    statuses = {p["name"]: p["status"] for p in json.loads(done.stdout)}
    assert statuses.pop("alloc") == "ok"
    assert set(statuses.values()) <= {"disabled"}
    done = flannel("backends", "list")
    assert done.returncode == 0 and "flannel-core" in done.stdout and "alloc" in done.stdout
    done = flannel("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("flannel-core ")
    assert "plugin alloc: flannel-core" in done.stdout


def test_etcd_flags_reach_the_client_config(tmp_path: Path) -> None:
    from flannel.cli.common import EtcdFlags

    flags = EtcdFlags(
        endpoints="https://198.18.0.1:2379,https://198.18.0.2:2379", prefix="/x/network",
        cafile="/ca.pem", certfile="/c.pem", keyfile="/k.pem", username="u", password="p",
    )  # fmt: skip
    manager = flags.manager()
    client = manager.client_config
    assert client.endpoints == ("https://198.18.0.1:2379", "https://198.18.0.2:2379")
    assert (client.ca_file, client.cert_file, client.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert (client.username, client.password) == ("u", "p")
    assert manager.config_key == "/x/network/config"
