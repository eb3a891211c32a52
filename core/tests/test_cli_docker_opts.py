"""``flannel docker-opts``: mk-docker-opts.sh's output from a subnet.env."""

from __future__ import annotations

from pathlib import Path

import pytest

from flannel.cli.app import run_app
from flannel.cli.common import CliError
from flannel.cli.docker_opts import docker_opts_lines

ENV = {"FLANNEL_NETWORK": "10.1.0.0/16", "FLANNEL_SUBNET": "10.1.74.1/24",
       "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}  # fmt: skip


def test_default_is_individual_and_combined() -> None:
    assert docker_opts_lines(ENV, individual=False, combined=False) == [
        'DOCKER_OPT_BIP="--bip=10.1.74.1/24"',
        'DOCKER_OPT_IPMASQ="--ip-masq=false"',
        'DOCKER_OPT_MTU="--mtu=1450"',
        'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"',
    ]


def test_individual_only_combined_only_and_key() -> None:
    assert docker_opts_lines(ENV, individual=True, combined=False)[-1] == (
        'DOCKER_OPT_MTU="--mtu=1450"'
    )
    assert docker_opts_lines(ENV, individual=False, combined=True, key="OPTS") == [
        'OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"'
    ]
    # -k KEY: the key's current value (from the environment) leads the combined options
    assert docker_opts_lines(
        ENV, individual=False, combined=True, key="OPTS", key_prefix="--debug"
    ) == ['OPTS="--debug  --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"']


def test_no_masq_and_inverse_masq() -> None:
    lines = docker_opts_lines(ENV, individual=False, combined=True, ip_masq=False)
    assert lines == ['DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1450"']
    off = {**ENV, "FLANNEL_IPMASQ": "false"}
    assert 'DOCKER_OPT_IPMASQ="--ip-masq=true"' in docker_opts_lines(
        off, individual=True, combined=False
    )
    with pytest.raises(CliError, match="Invalid value of FLANNEL_IPMASQ: yes"):
        docker_opts_lines({**ENV, "FLANNEL_IPMASQ": "yes"}, individual=True, combined=True)


def test_command_reads_f_and_writes_d(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "subnet.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    assert run_app(["docker-opts", "-f", str(env_file), "-c"]) == 0
    out, _ = capsys.readouterr()
    assert out == 'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450"\n'
    target = tmp_path / "docker_opts.env"
    assert run_app(["docker-opts", "-f", str(env_file), "-d", str(target), "-i", "-m"]) == 0
    assert (
        target.read_text() == 'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1450"\n'
    )
    assert run_app(["docker-opts", "-f", str(tmp_path / "none.env")]) == 1
    _, err = capsys.readouterr()
    assert "none.env does not exist" in err
