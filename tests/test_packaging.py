"""Wheels of flannel-core and a third-party backend, installed into a fresh venv, just work.

The venv borrows this interpreter's site-packages only for the third-party dependencies
(aetcd, typer, ...): flannel-core, the example backend and a broken plugin come from wheels
built here, installed with ``--no-deps`` so their code and entry points are the wheels' own.
One module-scoped venv serves all checks (building it is the slow part).
"""

from __future__ import annotations

import json
import shutil
import signal
import site as pysite
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flannel.testing.etcd import EtcdServer
from flannel.testing.netns import Netns

REPO = Path(__file__).resolve().parent.parent
SOURCES = {
    "core": REPO / "core",
    "example": REPO / "tests" / "example_backend",
    "broken": REPO / "tests" / "example_backend" / "broken",
}
PREFIX = "/coreos.com/network"

pytestmark = pytest.mark.timeout(600)


def _copy_source(src: Path, dst: Path) -> Path:
    """Build from a clean copy, so the checkout gets no build/ or egg-info droppings."""
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "tests", "broken")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


@dataclass
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def run(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
            env=env,
        )  # fmt: skip


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    work = tmp_path_factory.mktemp("packaging")
    wheels = work / "wheels"
    for name, src in SOURCES.items():
        copy = _copy_source(src, work / "src" / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", str(wheels), str(copy)],
            check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in built] == [
        "flannel_broken_example", "flannel_core", "flannel_example"
    ]  # fmt: skip
    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    # Third-party dependencies come from this interpreter's site-packages, added as plain
    # path entries: their .pth files (editable installs of our own packages) stay inactive.
    # (--system-site-packages would give the *base* interpreter's packages when the tests
    # themselves run in a venv, as in CI.)
    (venv_site,) = (root / "lib").glob("python3*/site-packages")
    (venv_site / "zz_parent_site.pth").write_text("\n".join(pysite.getsitepackages()) + "\n")
    subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         *map(str, wheels.glob("*.whl"))],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return Venv(root)


def test_core_comes_from_the_wheel(venv: Venv) -> None:
    done = venv.run("python", "-c", "import flannel, flannel_example; print(flannel.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(venv.root))
    assert (venv.bin / "flannel").exists() and (venv.bin / "flanneld").exists()


def test_backends_list_shows_example_and_broken(venv: Venv) -> None:
    done = venv.run("flannel", "backends", "list", "--json")
    assert done.returncode == 0, done.stderr
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    example = plugins["example"]
    assert example["status"] == "ok" and example["types"] == ["example"]
    assert (example["distribution"], example["version"]) == ("flannel-example", "0.3.1")
    broken = plugins["broken"]
    assert broken["status"] == "error" and broken["distribution"] == "flannel-broken-example"
    assert "ImportError" in broken["error"] and "frobnicator" in broken["error"]
    assert plugins["alloc"]["status"] == "ok"
    done = venv.run("flannel", "--version")
    assert "plugin example: flannel-example 0.3.1" in done.stdout


@pytest.fixture
def site(netns_factory: Callable[[str], Netns], tmp_path: Path) -> Iterator[tuple[Netns, str]]:
    ns = netns_factory("pkg")
    ns.sh(
        "ip link add veth0 type veth peer name veth1 && ip addr add 198.18.1.1/24 dev veth0 && "
        "ip link set veth0 up && ip link set veth1 up && "
        "ip route add default via 198.18.1.254 dev veth0"
    )
    (tmp_path / "etcd").mkdir()
    etcd = EtcdServer(netns=ns.name, data_dir=tmp_path / "etcd")
    etcd.start()
    try:
        yield ns, etcd.endpoint
    finally:
        etcd.close()


@pytest.mark.netns
def test_flannel_run_runs_the_example_backend(
    venv: Venv, site: tuple[Netns, str], tmp_path: Path
) -> None:
    ns, endpoint = site
    config = '{"Network":"10.244.0.0/16","Backend":{"Type":"example","Greeting":"hi"}}'
    ns.run(["etcdctl", f"--endpoints={endpoint}", "put", f"{PREFIX}/config", config])
    env_file = tmp_path / "subnet.env"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, str(venv.bin / "flannel"), "run",
         f"--etcd-endpoints={endpoint}", f"--subnet-file={env_file}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not env_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"flannel run exited {proc.returncode}: {proc.communicate()[1]}")
            time.sleep(0.05)
        assert "FLANNEL_MTU=1500\n" in env_file.read_text()
        out = ns.run(["etcdctl", f"--endpoints={endpoint}", "get", "--prefix",
                      "--print-value-only", f"{PREFIX}/subnets/"]).stdout  # fmt: skip
        assert json.loads(out) == {
            "PublicIP": "198.18.1.1", "PublicIPv6": None, "BackendType": "example",
            "BackendData": {"Greeting": "hi"},
        }  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.netns
def test_configuring_the_broken_plugin_names_it(
    venv: Venv, site: tuple[Netns, str], tmp_path: Path
) -> None:
    ns, endpoint = site
    config = '{"Network":"10.244.0.0/16","Backend":{"Type":"broken"}}'
    ns.run(["etcdctl", f"--endpoints={endpoint}", "put", f"{PREFIX}/config", config])
    done = ns.run(
        [str(venv.bin / "flanneld"), f"-etcd-endpoints={endpoint}",
         f"-subnet-file={tmp_path / 'subnet.env'}"],
        check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("flanneld: error: backend type 'broken'")
    assert "flannel-broken-example" in last and "frobnicator" in last
    assert not (tmp_path / "subnet.env").exists()
