#!/usr/bin/env bash
# Load-test kit: added latency and throughput of ONE ext_proc filter pointed at the
# gateway running six processors (A), versus SIX ext_proc filters each pointed at a
# gateway route running one processor (B), versus Envoy with no ext_proc filter (C).
#
#   benches/load/run.sh [--rounds N] [--duration SECONDS] [--connections C]
#                       [--rate REQ_PER_S] [--threads T] [--warmup SECONDS] [--keep]
#
# Starts, on free loopback ports only: the echo upstream, the gateway (release build,
# config from gateway.yaml.tmpl) and three Envoys (--concurrency 1, configs from the
# envoy-*.yaml.tmpl templates). Checks one request through each, then runs wrk
# (request.lua) against A, B, C in turn, N rounds (A B C, A B C, ...), failing on any
# non-2xx response, socket error or ext_proc failure counted by Envoy. Prints each run,
# a table per round, the medians, the CPU each process used, the gateway's own view
# (streams, messages and handler time per request) and the ratios (markdown).
# Everything it started is stopped on exit, Ctrl-C included. Needs: Rust, python3,
# openssl; installs wrk (Debian) and Envoy (scripts/install-envoy.sh, or ENVOY_BIN)
# when missing.
set -euo pipefail

rounds=3
duration=10
connections=16
rate=""
threads=1
warmup=2
keep=0

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $1 wants a positive integer, got '$2'" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) positive "$1" "${2-}"; rounds="$2"; shift 2 ;;
        --duration) positive "$1" "${2-}"; duration="$2"; shift 2 ;;
        --connections) positive "$1" "${2-}"; connections="$2"; shift 2 ;;
        --rate) positive "$1" "${2-}"; rate="$2"; shift 2 ;;
        --threads) positive "$1" "${2-}"; threads="$2"; shift 2 ;;
        --warmup) [[ "${2-}" =~ ^[0-9]+$ ]] || { echo "run.sh: --warmup wants seconds" >&2; exit 2; }; warmup="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if (( threads > connections )); then
    echo "run.sh: --threads ($threads) must not exceed --connections ($connections)" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
cd "${root}"
kit() { python3 "${here}/loadkit.py" "$@"; }
log() { printf '== %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (Debian package)"
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    install_wrk() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
    install_wrk || { $sudo apt-get update -qq >/dev/null && install_wrk; }
fi
for tool in python3 openssl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run.sh: needs $tool" >&2; exit 1; }
done
if [[ -n "${ENVOY_BIN:-}" ]]; then
    envoy="${ENVOY_BIN}"
else
    log "Envoy: scripts/install-envoy.sh (installs the pinned release if missing)"
    envoy="$(bash scripts/install-envoy.sh | tail -1)"
fi
log "building the gateway (cargo build --release)"
cargo build --release --quiet
gateway_bin="${root}/target/release/extproc-gateway"

# --- processes and cleanup ---------------------------------------------------------
work="$(mktemp -d -t extproc-load.XXXXXX)"
pids=()
ok=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local left=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
        (( left )) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if (( ok && ! keep )); then
        rm -rf "${work}"
    else
        echo "run.sh: logs, configs and raw wrk output kept in ${work}" >&2
        if (( ! ok )); then
            local f
            for f in "${work}"/*.log; do
                [[ -s "$f" ]] || continue
                echo "--- last lines of $f" >&2
                tail -n 15 "$f" >&2
            done
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND...: runs in the background, output to $work/NAME.log.
start() {
    local name="$1"
    shift
    "$@" >"${work}/${name}.log" 2>&1 &
    pids+=("$!")
    last_pid=$!
}

read -r p_up p_grpc p_admin p_a p_a_admin p_b p_b_admin p_c p_c_admin <<<"$(kit ports 9)"

log "starting the echo upstream on 127.0.0.1:${p_up}"
start upstream "${gateway_bin}" echo-upstream --addr "127.0.0.1:${p_up}"
upstream_pid="${last_pid}"
kit wait-http "http://127.0.0.1:${p_up}/ready" --pid "${last_pid}"

log "starting the gateway on 127.0.0.1:${p_grpc} (admin ${p_admin})"
kit render "${here}/gateway.yaml.tmpl" "${work}/gateway.yaml" "JWKS_FILE=${root}/examples/jwt/jwks.json"
"${gateway_bin}" check-config "${work}/gateway.yaml" >/dev/null
start gateway env -u EXTPROC_CONFIG "${gateway_bin}" serve --config "${work}/gateway.yaml" \
    --grpc-addr "127.0.0.1:${p_grpc}" --admin-addr "127.0.0.1:${p_admin}" \
    --shutdown-grace 1s --log warn
gateway_pid="${last_pid}"
kit wait-http "http://127.0.0.1:${p_admin}/readyz" --pid "${gateway_pid}"

declare -A listen admin label envoy_pid
listen=([one]="${p_a}" [six]="${p_b}" [baseline]="${p_c}")
admin=([one]="${p_a_admin}" [six]="${p_b_admin}" [baseline]="${p_c_admin}")
label=([one]="A one filter" [six]="B six filters" [baseline]="C baseline")
declare -A template=([one]="envoy-one-filter.yaml.tmpl" [six]="envoy-six-filters.yaml.tmpl" [baseline]="envoy-baseline.yaml.tmpl")
configs=(one six baseline)
for c in "${configs[@]}"; do
    log "starting Envoy ${label[$c]} on 127.0.0.1:${listen[$c]} (admin ${admin[$c]})"
    kit render "${here}/${template[$c]}" "${work}/envoy-${c}.yaml" \
        "LISTEN_PORT=${listen[$c]}" "ADMIN_PORT=${admin[$c]}" \
        "GATEWAY_PORT=${p_grpc}" "UPSTREAM_PORT=${p_up}"
    start "envoy-${c}" "${envoy}" -c "${work}/envoy-${c}.yaml" \
        --use-dynamic-base-id --concurrency 1 --log-level warn
    envoy_pid[$c]="${last_pid}"
    kit wait-http "http://127.0.0.1:${admin[$c]}/ready" --pid "${last_pid}"
    if [[ "$c" != baseline ]]; then
        kit wait-healthy "${admin[$c]}" --pid "${last_pid}"
    fi
done

# --- token and correctness ---------------------------------------------------------
# Valid for the whole run (and then some): wrk reuses it for every request.
ttl=$(( 600 + rounds * 3 * (duration + 10) + 3 * warmup ))
token="$(python3 examples/jwt/mint.py --sub load-test --ttl "${ttl}")"

log "checking one request through each Envoy"
for c in "${configs[@]}"; do
    chain=()
    [[ "$c" == baseline ]] || chain=(--chain)
    kit probe "http://127.0.0.1:${listen[$c]}/load/probe" --token "${token}" "${chain[@]}"
done

# --- load ---------------------------------------------------------------------------
export LOAD_TOKEN="${token}" LOAD_TENANT=acme
if [[ -n "${rate}" ]]; then
    # Each connection waits connections/rate seconds after each response.
    LOAD_DELAY_MS=$(( (1000 * connections + rate / 2) / rate ))
    (( LOAD_DELAY_MS >= 1 )) || { echo "run.sh: --rate too high for ${connections} connections (wrk delays are whole milliseconds)" >&2; exit 2; }
    export LOAD_DELAY_MS
fi

# run_wrk SECONDS URL OUTPUT: wrk in the background so that a signal reaches the trap.
run_wrk() {
    wrk --latency --timeout 5s -t "${threads}" -c "${connections}" -d "$1s" \
        -s "${here}/request.lua" "$2" >"$3" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local status=0
    wait "$pid" || status=$?
    (( status == 0 )) || { echo "run.sh: wrk failed (exit ${status}):" >&2; cat "$3" >&2; exit 1; }
}

if (( warmup > 0 )); then
    log "warm-up: ${warmup}s against each Envoy (not measured)"
    for c in "${configs[@]}"; do
        run_wrk "${warmup}" "http://127.0.0.1:${listen[$c]}/" "${work}/warmup-${c}.txt"
        kit check "${work}/warmup-${c}.txt" "${work}/warmup-${c}.json" --round 0 --config "$c" >/dev/null
    done
fi

pacing="unpaced (closed loop)"
[[ -z "${rate}" ]] || pacing="paced: each connection waits ${LOAD_DELAY_MS} ms after each response (cap ~${rate} req/s)"
log "measuring: ${rounds} rounds x (A B C), ${duration}s each, ${connections} connections, ${threads} wrk thread(s), ${pacing}"
mkdir -p "${work}/results"
for r in $(seq 1 "${rounds}"); do
    for c in "${configs[@]}"; do
        out="${work}/round${r}-${c}.txt"
        procs=("envoy=${envoy_pid[$c]}" "gateway=${gateway_pid}" "upstream=${upstream_pid}")
        kit gw-snap "${work}/gw-before.json" "${p_admin}"
        kit cpu-snap "${work}/cpu-before.json" "${procs[@]}"
        run_wrk "${duration}" "http://127.0.0.1:${listen[$c]}/" "${out}"
        kit cpu-snap "${work}/cpu-after.json" "${procs[@]}"
        kit gw-snap "${work}/gw-after.json" "${p_admin}"
        kit check "${out}" "${work}/results/round${r}-${c}.json" --round "$r" --config "$c" \
            --cpu "${work}/cpu-before.json" "${work}/cpu-after.json" \
            --gw "${work}/gw-before.json" "${work}/gw-after.json"
        [[ "$c" == baseline ]] || kit envoy-clean "${admin[$c]}"
        kill -0 "${gateway_pid}" 2>/dev/null || { echo "run.sh: the gateway died" >&2; exit 1; }
    done
done

echo
echo "## Results"
echo
echo "wrk ${connections} connections, ${threads} thread(s), ${duration}s per run, ${rounds} rounds interleaved A B C; ${pacing}."
echo "Machine: $(nproc) cores shared by wrk, three Envoys (one worker each), the gateway and the upstream."
echo
kit report "${work}/results"
ok=1
