#!/usr/bin/env bash
# Installs a Debian package when its command is missing (the load kit's wrk and
# valgrind, the dashboard test's chromium), with sudo when not root.
#
#   scripts/install-debian-package.sh PACKAGE [COMMAND]   (COMMAND defaults to PACKAGE)
set -euo pipefail

package="${1:?usage: install-debian-package.sh PACKAGE [COMMAND]}"
command="${2:-$1}"
command -v "${command}" >/dev/null 2>&1 && exit 0
echo "installing ${package} (Debian package)" >&2
sudo=""
[[ "$(id -u)" -eq 0 ]] || sudo="sudo"
install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${package}" >/dev/null; }
# The package lists may be missing or stale on a fresh machine: update once and retry.
install || { $sudo apt-get update -qq >/dev/null && install; }
command -v "${command}" >/dev/null 2>&1 || { echo "${package} installed, but ${command} is not on PATH" >&2; exit 1; }
