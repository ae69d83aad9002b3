#!/usr/bin/env bash
# Install everything qboot-systemd needs on a Debian 12 machine, as root.
#   setup.sh run    runtime: gcc, pkg-config, libsystemd-dev (for pystemd) + the venv
#   setup.sh test   also the oracles and tools the tests use
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_packages=(gcc pkg-config libsystemd-dev python3-venv)
test_packages=(ucspi-tcp-ipv6 systemd-container mailfront cvm swaks make groff-base
    build-essential debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject
    python3-pip python3-jinja2 python3-click python3-pystemd lintian fakeroot dpkg-dev rpm
    python3-all-dev tinycdb python3-pytest python3-hypothesis python3-build python3-installer
    openssl libio-socket-ssl-perl libnet-ssleay-perl stunnel4)

packages=("${runtime_packages[@]}")
[ "${1:-run}" = test ] && packages+=("${test_packages[@]}")

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]} (run as root to install)" >&2
        exit 1
    fi
    echo "setup: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && \
             apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# uv from PyPI in a private tool venv; the project venv comes from the committed uv.lock.
export UV_PYTHON_DOWNLOADS=never
if [ ! -x .tools/bin/uv ]; then
    python3 -m venv .tools
    .tools/bin/pip install -q "uv==0.13.9"
fi
extra=(--inexact)
[ "${1:-run}" = test ] && extra=(--extra dev)
# The interpreter's real path, not a shim's: uv rebuilds the venv (dropping the dev tools
# that `make run` does not ask for) whenever the path it is given is not the venv's.
python=$(python3 -c 'import sys; print(sys.executable)')
.tools/bin/uv sync -q --frozen --python "$python" "${extra[@]}"
