#!/usr/bin/env bash
# Load-test kit: what the gateway costs in front of a real Envoy, against Envoy alone,
# the floor (the least an ext_proc server can do) and six filters, in one run.
#
#   benches/load/run.sh [--rounds N] [--duration SECONDS] [--workloads LIST]
#                       [--configs LIST] [--envoy-concurrency N] [--threads T]
#                       [--rate REQ_PER_S] [--warmup SECONDS] [--no-grpc] [--keep]
#
# Configurations (--configs, default all), each its own Envoy:
#   baseline      no ext_proc filter
#   floor         one filter (headers SEND, bodies BUFFERED, allow_mode_override off)
#                 pointed at extproc-floor (benches/extproc-load)
#   empty         the same filter pointed at the gateway's empty chain
#   one           the same filter pointed at the gateway's six processors (trivial,
#                 timer, digest, jwt_auth, context_check, echo)
#   one-override  the same with allow_mode_override on: the gateway narrows per request
#   six           six filters, each on a gateway route running one of the six
# Workloads (--workloads, default all): get-c1, get-c16, post-c1, post-c16 (a GET, or
# a POST with a 1 KiB body, at 1 or 16 connections; any get-cN / post-cN works).
#
# Starts, on free loopback ports only: the echo upstream, the gateway and the floor
# (release builds) and one Envoy per configuration (--concurrency 2 by default). Checks
# one request through each, then runs wrk (request.lua) for every workload against
# every configuration in turn, N rounds interleaved, failing on any non-2xx response,
# socket error or ext_proc failure counted by Envoy. Then, unless --no-grpc, drives the
# floor and the gateway directly with extproc-load (no Envoy): full four-message
# exchanges, interleaved, for the exchanges each server does per CPU-second, and the
# six processors with telemetry off (request metrics off, no traces) against
# telemetry on (request metrics, and every stream's trace, or 1 % of them, exported
# over OTLP to a local collector, extproc-otlp-sink); and
# holds 10,000 streams between phases on a fresh floor and a fresh gateway, for the
# memory each idle stream costs. Prints
# every run, and per workload the medians, the latency added over Envoy alone, its
# ratio to the floor's, CPU per request of each process and ext_proc messages per
# request (from Envoy's stats), then the ratios the performance targets name
# (markdown). Everything it started is stopped on exit, Ctrl-C included. Needs: Rust,
# python3, openssl; installs wrk (Debian) and Envoy (scripts/install-envoy.sh, or
# ENVOY_BIN) when missing.
set -euo pipefail

rounds=3
duration=10
workloads="get-c1,get-c16,post-c1,post-c16"
configs_arg="baseline,floor,empty,one,one-override,six"
envoy_concurrency=2
rate=""
threads=2
warmup=2
grpc=1
keep=0

usage() { sed -n '2,34p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $1 wants a positive integer, got '$2'" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) positive "$1" "${2-}"; rounds="$2"; shift 2 ;;
        --duration) positive "$1" "${2-}"; duration="$2"; shift 2 ;;
        --workloads) workloads="${2-}"; shift 2 ;;
        --configs) configs_arg="${2-}"; shift 2 ;;
        --envoy-concurrency) positive "$1" "${2-}"; envoy_concurrency="$2"; shift 2 ;;
        --rate) positive "$1" "${2-}"; rate="$2"; shift 2 ;;
        --threads) positive "$1" "${2-}"; threads="$2"; shift 2 ;;
        --warmup) [[ "${2-}" =~ ^[0-9]+$ ]] || { echo "run.sh: --warmup wants seconds" >&2; exit 2; }; warmup="$2"; shift 2 ;;
        --no-grpc) grpc=0; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
IFS=, read -r -a workload_list <<<"${workloads}"
IFS=, read -r -a configs <<<"${configs_arg}"
for w in "${workload_list[@]}"; do
    [[ "$w" =~ ^(get|post)-c[1-9][0-9]*$ ]] || { echo "run.sh: workload '$w' is not get-cN or post-cN" >&2; exit 2; }
done
known=" baseline floor empty one one-override six "
for c in "${configs[@]}"; do
    [[ "${known}" == *" $c "* ]] || { echo "run.sh: unknown configuration '$c' (known:${known})" >&2; exit 2; }
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
cd "${root}"
kit() { python3 "${here}/loadkit.py" "$@"; }
log() { printf '== %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------
bash scripts/install-debian-package.sh wrk
for tool in python3 openssl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run.sh: needs $tool" >&2; exit 1; }
done
if [[ -n "${ENVOY_BIN:-}" ]]; then
    envoy="${ENVOY_BIN}"
else
    log "Envoy: scripts/install-envoy.sh (installs the pinned release if missing)"
    envoy="$(bash scripts/install-envoy.sh | tail -1)"
fi
log "building the gateway, the floor and the load generator (cargo build --release)"
cargo build --release --quiet -p extproc-gateway -p extproc-load
gateway_bin="${root}/target/release/extproc-gateway"
floor_bin="${root}/target/release/extproc-floor"
load_bin="${root}/target/release/extproc-load"
sink_bin="${root}/target/release/extproc-otlp-sink"

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

read -r -a ports <<<"$(kit ports $(( 4 + 2 * ${#configs[@]} )))"
p_up="${ports[0]}" p_grpc="${ports[1]}" p_admin="${ports[2]}" p_floor="${ports[3]}"

log "starting the echo upstream on 127.0.0.1:${p_up}"
start upstream "${gateway_bin}" echo-upstream --addr "127.0.0.1:${p_up}"
upstream_pid="${last_pid}"
kit wait-http "http://127.0.0.1:${p_up}/ready" --pid "${last_pid}"

log "starting the gateway on 127.0.0.1:${p_grpc} (admin ${p_admin})"
kit render "${here}/gateway.yaml.tmpl" "${work}/gateway.yaml" "JWKS_FILE=${root}/examples/jwt/jwks.json" \
    "REQUEST_METRICS=true"
"${gateway_bin}" check-config "${work}/gateway.yaml" >/dev/null
start gateway env -u EXTPROC_CONFIG "${gateway_bin}" serve --config "${work}/gateway.yaml" \
    --grpc-addr "127.0.0.1:${p_grpc}" --admin-addr "127.0.0.1:${p_admin}" \
    --shutdown-grace 1s --drain-delay 0s --log warn
gateway_pid="${last_pid}"
kit wait-http "http://127.0.0.1:${p_admin}/readyz" --pid "${gateway_pid}"

log "starting the floor on 127.0.0.1:${p_floor}"
start floor "${floor_bin}" --addr "127.0.0.1:${p_floor}"
floor_pid="${last_pid}"
kit wait-tcp "127.0.0.1:${p_floor}" --pid "${floor_pid}"

gateway_checks='[{timeout: 1s, interval: 2s, unhealthy_threshold: 2, healthy_threshold: 1, grpc_health_check: {service_name: envoy.service.ext_proc.v3.ExternalProcessor}}]'
declare -A listen admin envoy_pid server_pid
i=4
for c in "${configs[@]}"; do
    listen[$c]="${ports[$i]}"
    admin[$c]="${ports[$((i + 1))]}"
    i=$(( i + 2 ))
    common=("LISTEN_PORT=${listen[$c]}" "ADMIN_PORT=${admin[$c]}" "UPSTREAM_PORT=${p_up}")
    case "$c" in
        baseline)
            kit render "${here}/envoy-baseline.yaml.tmpl" "${work}/envoy-${c}.yaml" "${common[@]}" ;;
        six)
            kit render "${here}/envoy-six-filters.yaml.tmpl" "${work}/envoy-${c}.yaml" "${common[@]}" \
                "GATEWAY_PORT=${p_grpc}" ;;
        floor)
            kit render "${here}/envoy-one-filter.yaml.tmpl" "${work}/envoy-${c}.yaml" "${common[@]}" \
                "EXTPROC_PORT=${p_floor}" "OVERRIDE=false" "CHAIN=all" "HEALTH_CHECKS=[]" ;;
        *)
            override=false
            chain=all
            [[ "$c" == one-override ]] && override=true
            [[ "$c" == empty ]] && chain=none
            kit render "${here}/envoy-one-filter.yaml.tmpl" "${work}/envoy-${c}.yaml" "${common[@]}" \
                "EXTPROC_PORT=${p_grpc}" "OVERRIDE=${override}" "CHAIN=${chain}" \
                "HEALTH_CHECKS=${gateway_checks}" ;;
    esac
    case "$c" in
        baseline) server_pid[$c]="" ;;
        floor) server_pid[$c]="${floor_pid}" ;;
        *) server_pid[$c]="${gateway_pid}" ;;
    esac
    log "starting Envoy '${c}' on 127.0.0.1:${listen[$c]} (admin ${admin[$c]})"
    start "envoy-${c}" "${envoy}" -c "${work}/envoy-${c}.yaml" \
        --use-dynamic-base-id --concurrency "${envoy_concurrency}" --log-level warn
    envoy_pid[$c]="${last_pid}"
    kit wait-http "http://127.0.0.1:${admin[$c]}/ready" --pid "${last_pid}"
    case "$c" in
        baseline|floor) ;;
        *) kit wait-healthy "${admin[$c]}" --pid "${last_pid}" ;;
    esac
done

# --- token and correctness ---------------------------------------------------------
# Valid for the whole run (and then some): wrk reuses it for every request.
ttl=$(( 900 + rounds * ${#workload_list[@]} * ${#configs[@]} * (duration + 10) + 30 * warmup + 3 * rounds * (duration + 5) ))
token="$(python3 examples/jwt/mint.py --sub load-test --ttl "${ttl}")"

log "checking one request through each Envoy"
for c in "${configs[@]}"; do
    case "$c" in
        one|one-override|six) kit probe "http://127.0.0.1:${listen[$c]}/load/probe" --token "${token}" --chain ;;
        *) kit probe "http://127.0.0.1:${listen[$c]}/load/probe" --token "${token}" ;;
    esac
done

# --- load through Envoy ----------------------------------------------------------------
export LOAD_TOKEN="${token}" LOAD_TENANT=acme

# workload W: sets method, conns, wrk_threads and the request.lua environment.
workload() {
    local w="$1"
    method="${w%%-*}"
    method="${method^^}"
    conns="${w##*-c}"
    wrk_threads=$(( threads < conns ? threads : conns ))
    export LOAD_METHOD="${method}"
    if [[ "${method}" == POST ]]; then export LOAD_BODY_BYTES=1024; else export LOAD_BODY_BYTES=0; fi
    unset LOAD_DELAY_MS
    if [[ -n "${rate}" ]]; then
        # Each connection waits conns/rate seconds after each response.
        LOAD_DELAY_MS=$(( (1000 * conns + rate / 2) / rate ))
        (( LOAD_DELAY_MS >= 1 )) || { echo "run.sh: --rate too high for ${conns} connections (wrk delays are whole milliseconds)" >&2; exit 2; }
        export LOAD_DELAY_MS
    fi
}

# run_wrk SECONDS URL OUTPUT: wrk in the background so that a signal reaches the trap.
run_wrk() {
    wrk --latency --timeout 5s -t "${wrk_threads}" -c "${conns}" -d "$1s" \
        -s "${here}/request.lua" "$2" >"$3" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local status=0
    wait "$pid" || status=$?
    (( status == 0 )) || { echo "run.sh: wrk failed (exit ${status}):" >&2; cat "$3" >&2; exit 1; }
}

if (( warmup > 0 )); then
    log "warm-up: ${warmup}s per workload against each Envoy (not measured)"
    for w in "${workload_list[@]}"; do
        workload "$w"
        for c in "${configs[@]}"; do
            run_wrk "${warmup}" "http://127.0.0.1:${listen[$c]}/" "${work}/warmup-${w}-${c}.txt"
            kit check "${work}/warmup-${w}-${c}.txt" "${work}/warmup-${w}-${c}.json" \
                --round 0 --workload "$w" --config "$c" >/dev/null
        done
    done
fi

pacing="unpaced (closed loop)"
[[ -z "${rate}" ]] || pacing="paced: each connection waits connections/${rate} s after each response (cap ~${rate} req/s)"
log "measuring: ${rounds} rounds x ${#workload_list[@]} workloads x ${#configs[@]} configurations, ${duration}s each, ${pacing}"
mkdir -p "${work}/results"
for r in $(seq 1 "${rounds}"); do
    for w in "${workload_list[@]}"; do
        workload "$w"
        for c in "${configs[@]}"; do
            out="${work}/round${r}-${w}-${c}.txt"
            procs=("envoy=${envoy_pid[$c]}" "upstream=${upstream_pid}")
            [[ -z "${server_pid[$c]}" ]] || procs+=("server=${server_pid[$c]}")
            # The gateway's own view, for the configurations it serves.
            gw=()
            [[ "${server_pid[$c]}" != "${gateway_pid}" ]] || gw=(--gw "${work}/gw-before.json" "${work}/gw-after.json")
            (( ${#gw[@]} == 0 )) || kit gw-snap "${work}/gw-before.json" "${p_admin}"
            kit envoy-snap "${work}/envoy-before.json" "${admin[$c]}"
            kit cpu-snap "${work}/cpu-before.json" "${procs[@]}"
            run_wrk "${duration}" "http://127.0.0.1:${listen[$c]}/" "${out}"
            kit cpu-snap "${work}/cpu-after.json" "${procs[@]}"
            kit envoy-snap "${work}/envoy-after.json" "${admin[$c]}"
            (( ${#gw[@]} == 0 )) || kit gw-snap "${work}/gw-after.json" "${p_admin}"
            kit check "${out}" "${work}/results/round${r}-${w}-${c}.json" --round "$r" \
                --workload "$w" --config "$c" \
                --cpu "${work}/cpu-before.json" "${work}/cpu-after.json" \
                --envoy "${work}/envoy-before.json" "${work}/envoy-after.json" "${gw[@]}"
            [[ "$c" == baseline ]] || kit envoy-clean "${admin[$c]}"
            kill -0 "${gateway_pid}" 2>/dev/null || { echo "run.sh: the gateway died" >&2; exit 1; }
            kill -0 "${floor_pid}" 2>/dev/null || { echo "run.sh: the floor died" >&2; exit 1; }
        done
    done
done

# --- direct gRPC load, no Envoy ------------------------------------------------------
if (( grpc )); then
    mkdir -p "${work}/grpc"
    # Three more gateways for the telemetry comparison, each serving the six
    # processors: request metrics off and no trace export (`bare`); request metrics on
    # and every stream traced, exported over OTLP to a local collector (`traced`); the
    # same with 1 % of streams sampled (`sampled`). Each exports to its own sink, which
    # counts what arrives.
    read -r -a tp <<<"$(kit ports 8)"
    kit render "${here}/gateway.yaml.tmpl" "${work}/gateway-bare.yaml" \
        "JWKS_FILE=${root}/examples/jwt/jwks.json" "REQUEST_METRICS=false"
    start gateway-bare env -u EXTPROC_CONFIG -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
        "${gateway_bin}" serve --config "${work}/gateway-bare.yaml" \
        --grpc-addr "127.0.0.1:${tp[0]}" --admin-addr "127.0.0.1:${tp[1]}" --shutdown-grace 1s --drain-delay 0s --log warn
    bare_pid="${last_pid}"
    kit wait-http "http://127.0.0.1:${tp[1]}/readyz" --pid "${bare_pid}"
    declare -A traced_pid traced_port
    i=2
    for t in traced sampled; do
        case "$t" in
            traced) sampler=(OTEL_TRACES_SAMPLER=always_on) ;;
            sampled) sampler=(OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
        esac
        start "sink-${t}" "${sink_bin}" --addr "127.0.0.1:${tp[$i]}"
        kit wait-tcp "127.0.0.1:${tp[$i]}" --pid "${last_pid}"
        start "gateway-${t}" env -u EXTPROC_CONFIG -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT -u EXTPROC_TRACE_PROCESSORS \
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:${tp[$i]}" OTEL_SERVICE_NAME=extproc-gateway-load "${sampler[@]}" \
            "${gateway_bin}" serve --config "${work}/gateway.yaml" \
            --grpc-addr "127.0.0.1:${tp[$((i + 1))]}" --admin-addr "127.0.0.1:${tp[$((i + 2))]}" --shutdown-grace 1s --drain-delay 0s --log warn
        traced_pid[$t]="${last_pid}"
        traced_port[$t]="${tp[$((i + 1))]}"
        kit wait-http "http://127.0.0.1:${tp[$((i + 2))]}/readyz" --pid "${last_pid}"
        i=$(( i + 3 ))
    done
    log "direct gRPC load: ${rounds} rounds x (floor, gateway empty chain, gateway six, six with telemetry off, six traced, six sampled), ${duration}s each, 16 in flight"
    direct=(-c 16 --connections 2 -d "${duration}s" --warmup 1s --quiet
        --phases request-headers,request-body,response-headers,response-body
        --request-body 1024 --response-body 1024 --body-mode buffered
        -H "authorization:Bearer ${token}" -H "x-tenant-id:acme")
    for r in $(seq 1 "${rounds}"); do
        for t in floor empty six bare traced sampled; do
            case "$t" in
                floor) target="${p_floor}" pid="${floor_pid}" meta=() ;;
                empty) target="${p_grpc}" pid="${gateway_pid}" meta=(--metadata x-processor=none) ;;
                six) target="${p_grpc}" pid="${gateway_pid}" meta=(--metadata x-processor=all) ;;
                bare) target="${tp[0]}" pid="${bare_pid}" meta=(--metadata x-processor=all) ;;
                traced|sampled) target="${traced_port[$t]}" pid="${traced_pid[$t]}" meta=(--metadata x-processor=all) ;;
            esac
            "${load_bin}" --target "http://127.0.0.1:${target}" "${direct[@]}" "${meta[@]}" \
                --server-pid "${pid}" --json "${work}/grpc/round${r}-${t}.json" \
                >"${work}/grpc-round${r}-${t}.txt" 2>&1 \
                || { echo "run.sh: extproc-load against ${t} failed:" >&2; cat "${work}/grpc-round${r}-${t}.txt" >&2; exit 1; }
            printf '  round %d %-6s %s\n' "$r" "$t" "$(sed -n 3p "${work}/grpc-round${r}-${t}.txt")" >&2
        done
    done
    # A traced gateway flushes its last batch on SIGTERM; each sink prints its counts
    # each second they change.
    for t in traced sampled; do
        kill -TERM "${traced_pid[$t]}" 2>/dev/null || true
        wait "${traced_pid[$t]}" 2>/dev/null || true
    done
    sleep 1.5
    for t in traced sampled; do
        grep '^spans ' "${work}/sink-${t}.log" | tail -1 >"${work}/grpc/sink-${t}.txt" || true
        [[ -s "${work}/grpc/sink-${t}.txt" ]] || { echo "run.sh: the OTLP sink received no spans from the ${t} gateway" >&2; exit 1; }
        log "OTLP sink of '${t}': $(cat "${work}/grpc/sink-${t}.txt")"
    done
fi

# --- idle streams --------------------------------------------------------------------
if (( grpc )); then
    mkdir -p "${work}/hold"
    read -r -a hp <<<"$(kit ports 3)"
    log "idle streams: 10,000 held between phases by a fresh floor and a fresh gateway, ${rounds} rounds"
    for r in $(seq 1 "${rounds}"); do
        for t in floor gateway; do
            if [[ "$t" == floor ]]; then
                start "hold-floor-${r}" "${floor_bin}" --addr "127.0.0.1:${hp[0]}"
                pid="${last_pid}" target="${hp[0]}"
                kit wait-tcp "127.0.0.1:${target}" --pid "${pid}"
            else
                start "hold-gateway-${r}" env -u EXTPROC_CONFIG "${gateway_bin}" serve \
                    --config "${work}/gateway.yaml" --grpc-addr "127.0.0.1:${hp[1]}" \
                    --admin-addr "127.0.0.1:${hp[2]}" --shutdown-grace 1s --drain-delay 0s --log warn
                pid="${last_pid}" target="${hp[1]}"
                kit wait-http "http://127.0.0.1:${hp[2]}/readyz" --pid "${pid}"
            fi
            "${load_bin}" --target "http://127.0.0.1:${target}" --hold 10000 --connections 50 \
                --server-pid "${pid}" --metadata x-processor=all \
                -H "authorization:Bearer ${token}" -H "x-tenant-id:acme" \
                --json "${work}/hold/round${r}-${t}.json" >"${work}/hold-round${r}-${t}.txt" 2>&1 \
                || { echo "run.sh: holding streams on the ${t} failed:" >&2; cat "${work}/hold-round${r}-${t}.txt" >&2; exit 1; }
            printf '  round %d %-8s %s\n' "$r" "$t" "$(tail -1 "${work}/hold-round${r}-${t}.txt")" >&2
            kill -TERM "${pid}" 2>/dev/null || true
            wait "${pid}" 2>/dev/null || true
        done
    done
fi

echo
echo "## Results"
echo
echo "wrk, ${duration}s per run, ${rounds} rounds interleaved (every configuration in turn per workload); ${pacing}."
echo "Envoy --concurrency ${envoy_concurrency}, one Envoy per configuration. Machine: $(nproc) cores shared by wrk, the Envoys, the gateway, the floor and the upstream."
echo
grpc_report=()
(( ! grpc )) || grpc_report=(--grpc "${work}/grpc" --hold "${work}/hold")
kit report "${work}/results" "${grpc_report[@]}"
ok=1
