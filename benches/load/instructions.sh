#!/usr/bin/env bash
# Instructions per ext_proc exchange of the real server processes, counted by
# callgrind: repeatable where wall-clock ratios swing with the machine's load.
#
#   benches/load/instructions.sh [--exchanges N] [--keep]
#
# Each server is started under `valgrind --tool=callgrind` on a free loopback port and
# driven by extproc-load (4 in flight, one connection) with full four-message
# exchanges of a 1 KiB POST (headers and BUFFERED bodies), as the kit's direct runs
# send them. After 300 warm-up exchanges the counters are zeroed, N exchanges are
# run (default 2000), and the counts are dumped: transport, decoding, the chain and
# encoding, everything the process executes for them, on every thread.
#
# Servers: the floor (extproc-floor); the gateway's empty chain; its six processors
# with request metrics on (as served by default), with request metrics off, and with
# every stream traced to a local OTLP sink (extproc-otlp-sink).
#
# Note: valgrind runs without the CPU's SHA extensions, so `digest`'s and `jwt_auth`'s
# SHA-256 count several times what they cost natively; the table says how much.
# Needs valgrind (Debian package; installed when missing), python3, Rust.
set -euo pipefail

exchanges=2000
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --exchanges) [[ "${2-}" =~ ^[1-9][0-9]*$ ]] || { echo "instructions.sh: --exchanges wants a positive integer" >&2; exit 2; }; exchanges="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "instructions.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
cd "${root}"
kit() { python3 "${here}/loadkit.py" "$@"; }
log() { printf '== %s\n' "$*" >&2; }

bash scripts/install-debian-package.sh valgrind
log "building the gateway, the floor, the sink and the load generator (cargo build --release)"
cargo build --release --quiet -p extproc-gateway -p extproc-load
bin="${root}/target/release"

work="$(mktemp -d -t extproc-instructions.XXXXXX)"
pids=()
cleanup() {
    local status=$?
    local pid
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if (( keep || status != 0 )); then
        echo "instructions.sh: callgrind files and logs kept in ${work}" >&2
    else
        rm -rf "${work}"
    fi
    exit "$status"
}
trap cleanup EXIT

kit render "${here}/gateway.yaml.tmpl" "${work}/gateway.yaml" "JWKS_FILE=${root}/examples/jwt/jwks.json" "REQUEST_METRICS=true"
kit render "${here}/gateway.yaml.tmpl" "${work}/gateway-bare.yaml" "JWKS_FILE=${root}/examples/jwt/jwks.json" "REQUEST_METRICS=false"
token="$(python3 examples/jwt/mint.py --sub load-test --ttl 3600)"
read -r -a ports <<<"$(kit ports 2)"
sink_port="${ports[0]}" port="${ports[1]}"
"${bin}/extproc-otlp-sink" --addr "127.0.0.1:${sink_port}" >"${work}/sink.log" 2>&1 &
pids+=("$!")
kit wait-tcp "127.0.0.1:${sink_port}" --pid "$!"

# measure NAME METADATA ENV... -- COMMAND...: instructions per exchange of one server.
measure() {
    local name="$1" meta="$2"
    shift 2
    local envs=()
    while [[ "$1" != -- ]]; do envs+=("$1"); shift; done
    shift
    env -u EXTPROC_CONFIG -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "${envs[@]}" \
        valgrind --tool=callgrind --callgrind-out-file="${work}/${name}.%p" "$@" >"${work}/${name}.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    kit wait-tcp "127.0.0.1:${port}" --pid "$pid" --timeout 120
    local load=("${bin}/extproc-load" --target "http://127.0.0.1:${port}" -c 4 --connections 1 --quiet
        --phases request-headers,request-body,response-headers,response-body
        --request-body 1024 --response-body 1024 --body-mode buffered
        -H "authorization:Bearer ${token}" -H "x-tenant-id:acme")
    [[ -z "$meta" ]] || load+=(--metadata "$meta")
    "${load[@]}" -n 300 >/dev/null
    callgrind_control -z "$pid" >/dev/null
    "${load[@]}" -n "${exchanges}" --json "${work}/${name}.json" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local dump
    dump="$(ls "${work}/${name}."*.1)"
    local total sha
    total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    sha="$(callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null | awk '/sha2::sha256::compress256/ && !done {gsub(",", "", $1); print $1; done = 1}')"
    printf '%s %s %s\n' "$name" "$total" "${sha:-0}" >>"${work}/counts.txt"
    log "${name}: $(( total / exchanges )) instructions per exchange"
}

six=x-processor=all
serve=("${bin}/extproc-gateway" serve --grpc-addr "127.0.0.1:${port}" --admin-addr 127.0.0.1:0 --log warn)
measure floor "" -- "${bin}/extproc-floor" --addr "127.0.0.1:${port}" --threads 2
measure empty x-processor=none -- "${serve[@]}" --config "${work}/gateway.yaml"
measure six "$six" -- "${serve[@]}" --config "${work}/gateway.yaml"
measure bare "$six" -- "${serve[@]}" --config "${work}/gateway-bare.yaml"
measure traced "$six" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${sink_port}" OTEL_TRACES_SAMPLER=always_on \
    -- "${serve[@]}" --config "${work}/gateway.yaml"

echo
echo "## Instructions per exchange (callgrind), ${exchanges} exchanges each"
echo
echo "| server | instructions per exchange | / floor's | of which SHA-256 | / floor's without SHA-256 |"
echo "|---|---:|---:|---:|---:|"
python3 - "${work}/counts.txt" "${exchanges}" <<'EOF'
import sys
rows = [line.split() for line in open(sys.argv[1])]
n = int(sys.argv[2])
label = {
    "floor": "floor",
    "empty": "gateway, empty chain",
    "six": "gateway, six processors (request metrics on)",
    "bare": "six, request metrics off",
    "traced": "six, every stream traced to OTLP",
}
floor = next(int(t) for name, t, _ in rows if name == "floor") / n
for name, total, sha in rows:
    per, sha = int(total) / n, int(sha) / n
    print(f"| {label[name]} | {per:,.0f} | {per / floor:.2f} | {sha:,.0f} | {(per - sha) / floor:.2f} |")
EOF
