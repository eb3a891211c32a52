"""`flannel backends new`: the generated distribution installs and passes its own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import flannel
from flannel.scaffold import ScaffoldError, generate_backend


def test_rejects_bad_names(tmp_path: Path) -> None:
    for bad in ("", "Vx", "1abc", "a_b", "a--b", "a/b"):
        with pytest.raises(ScaffoldError, match="not valid"):
            generate_backend(bad, tmp_path, "flannel-core")


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_backend("demo", tmp_path, "flannel-core")
    with pytest.raises(ScaffoldError, match="already exists"):
        generate_backend("demo", tmp_path, "flannel-core")


def _venv_over_current(path: Path) -> Path:
    """A venv whose site also holds this interpreter's packages (flannel-core, pytest...)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    parent_site = sysconfig.get_paths()["purelib"]
    Path(site, "_flannel_parent.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
    return python


@pytest.mark.lab
@pytest.mark.timeout(900)
def test_generated_backend_passes_its_own_tests(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the generated conformance tests need root")
    root = generate_backend("demo-net", tmp_path, f"flannel-core>={flannel.__version__}")
    python = _venv_over_current(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", str(root)],
        check=True,
    )  # fmt: skip
    listed = subprocess.run(
        [str(python), "-m", "flannel", "backends", "list", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert '"demo-net"' in listed
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # 2 unit tests + the 7 conformance tests, none skipped
    assert "9 passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
