#!/usr/bin/env bash
# Old vs new cost of one stream through the chain bench (benches/chain.rs: request
# headers and response headers through the exchange, trivial + timer + digest and the
# protobuf encoding, in process), without and with metrics: each side's own bench
# built from its own revision (an older revision exported with `git archive`), run
# interleaved (old, new, old, new, ...); each round's median, then the median of the
# round medians and the ratio. Then, since the wall clock of a few microseconds swings
# on a shared machine, callgrind instruction counts of N and 2N streams per side
# (benches/instructions.rs), differenced so start-up cancels out.
#   benches/chain_cost.sh ROUNDS OLD_REV
# Both builds share CARGO_TARGET_DIR (default ./target), so dependencies build once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=support/interleave.sh
source benches/support/interleave.sh
old_tree "$@"
echo "old: $(git rev-parse --short "$old_rev"), new: working tree; building both" >&2
(cd "$old_dir" && cargo bench --bench chain --no-run) >/dev/null 2>&1
cargo bench --bench chain --no-run >/dev/null 2>&1
interleave chain two_messages "$rounds" "$old_dir" no_metrics metrics
if command -v valgrind >/dev/null 2>&1; then
    exe() {
        (cd "$1" && cargo bench --bench instructions --no-run 2>&1) |
            sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1
    }
    old_bin="$old_dir/$(exe "$old_dir")"
    [ -x "$old_bin" ] || old_bin="$(exe "$old_dir")"
    new_bin="$(exe "$PWD")"
    count() {
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$2" "$3" 2>&1 |
            awk '/Collected/ {print $NF}'
    }
    for mode in no_metrics metrics; do
        for side in old new; do
            bin="$new_bin"
            [ "$side" = old ] && bin="$old_bin"
            one="$(count "$bin" "$mode" 1000)"
            two="$(count "$bin" "$mode" 2000)"
            echo "instructions per stream, ${mode}, ${side}: $(( (two - one) / 1000 ))"
        done
    done
fi
