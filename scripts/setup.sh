#!/usr/bin/env bash
# Install everything flannel and its tests need on a fresh Debian machine (run as root).
# Idempotent: system packages from apt, the workspace into ./.venv (editable installs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs packages and the lab needs network namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_packages=(etcd-server etcd-client iproute2 iptables nftables iperf3 iputils-ping
              python3 python3-venv python3-dev gcc openssl procps)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel build
packages=(-e "core[test]")
for plugin in plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] || continue
    if grep -q '^\[project.optional-dependencies\]' "$plugin/pyproject.toml" \
        && grep -q '^test *=' "$plugin/pyproject.toml"; then
        packages+=(-e "${plugin%/}[test]")
    else
        packages+=(-e "${plugin%/}")
    fi
done
.venv/bin/python -m pip install -q "${packages[@]}"
echo "setup.sh: ready (.venv/bin/flannel, $(.venv/bin/python --version))"
