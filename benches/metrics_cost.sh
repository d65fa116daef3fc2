#!/usr/bin/env bash
# Side-by-side cost of metrics per message, for the three-processor chain of
# benches/chain.rs (trivial, timer, digest; one request-headers and one
# response-headers message per stream):
#   - wall clock: the `chain` criterion bench without and with metrics, interleaved
#     (A B A B ...), each round's median, the median of medians and their ratio;
#   - instructions: callgrind counts for N and 2N streams of each, so the per-stream
#     difference excludes start-up (repeatable on a noisy machine).
#   benches/metrics_cost.sh [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds="${1:-5}"
cargo bench --bench chain --no-run >/dev/null 2>&1
cargo bench --bench instructions --no-run >/dev/null 2>&1
median() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
        "target/criterion/two_messages/$1/new/estimates.json"
}
a=()
b=()
for i in $(seq 1 "$rounds"); do
    for name in no_metrics metrics; do
        cargo bench --bench chain -- --warm-up-time 1 --measurement-time 3 "two_messages/${name}\$" >/dev/null 2>&1
    done
    a+=("$(median no_metrics)")
    b+=("$(median metrics)")
    printf 'round %d: no_metrics %.0f ns, metrics %.0f ns\n' "$i" "${a[-1]}" "${b[-1]}"
done
python3 - "${a[*]}" "${b[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"wall clock, median of {len(a)} interleaved rounds: no_metrics {ma:.0f} ns, metrics {mb:.0f} ns per stream (two messages)")
print(f"metrics cost: {mb - ma:+.0f} ns per stream ({(mb - ma) / 2:+.0f} ns per message), ratio {mb / ma:.3f}")
PY
if command -v valgrind >/dev/null 2>&1; then
    bin="$(ls target/release/deps/instructions-* | grep -v '\.d$' | head -1)"
    count() {
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
            awk '/Collected/ {print $NF}'
    }
    for mode in no_metrics metrics; do
        one="$(count "$mode" 1000)"
        two="$(count "$mode" 2000)"
        echo "instructions, ${mode}: $(( (two - one) / 1000 )) per stream"
    done
fi
