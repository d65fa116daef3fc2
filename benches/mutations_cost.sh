#!/usr/bin/env bash
# Old vs new cost of header edits per request-headers message (benches/mutations.rs):
# the same criterion bench built from an older revision (exported with `git archive`
# into a temporary directory, this bench file, or its pre-`wire` copy, put in) and
# from the working tree,
# run interleaved (old, new, old, new, ...), each round's median, then the median of
# the round medians and the ratio, per benchmark.
#   benches/mutations_cost.sh ROUNDS OLD_REV
# e.g. benches/mutations_cost.sh 3 3570fd5 (the last revision with the quadratic
# builder). Both builds share CARGO_TARGET_DIR (default ./target), so dependencies
# build once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=support/interleave.sh
source benches/support/interleave.sh
old_tree "$@"
# The bench drives the exchange through wire::decode / wire::encode; a revision from
# before them (the exchange took protobuf messages itself) gets the last copy of the
# bench written for that API (647755a), which measures the same thing.
if git cat-file -e "$old_rev:src/wire/mod.rs" 2>/dev/null; then
    cp benches/mutations.rs "$old_dir/benches/mutations.rs"
else
    git show 647755a:benches/mutations.rs >"$old_dir/benches/mutations.rs"
fi
if ! grep -q '^name = "mutations"' "$old_dir/Cargo.toml"; then
    printf '\n[[bench]]\nname = "mutations"\nharness = false\n' >>"$old_dir/Cargo.toml"
fi
echo "old: $(git rev-parse --short "$old_rev"), new: working tree; building both" >&2
(cd "$old_dir" && cargo bench --bench mutations --no-run) >/dev/null 2>&1
cargo bench --bench mutations --no-run >/dev/null 2>&1
interleave mutations mutations "$rounds" "$old_dir" instructions_60k instructions_60k_wire instructions_60k_worst instructions_60k_worst_wire instructions_small
