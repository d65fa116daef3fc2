# Sourced by the old-vs-new cost scripts (chain_cost.sh, mutations_cost.sh), from the
# repository's root.
#
#   old_tree "$@"
# reads the scripts' arguments (ROUNDS OLD_REV) into `rounds` and `old_rev`, exports
# OLD_REV with `git archive` into a temporary `old_dir` (removed on exit) under another
# package name (its dependency on itself, for the test driver, renamed to match), so
# the old build's artifacts do not share names (and cargo's freshness
# checks) with the new one's in the shared target directory: with the same Cargo.toml
# both would be one binary, and the comparison would compare it with itself. Both
# builds share CARGO_TARGET_DIR (default ./target), so dependencies build once.
#
#   interleave TARGET GROUP ROUNDS OLD_DIR ID...
# runs one criterion bench target from the old tree and from the working tree,
# interleaved (old, new, old, new, ...), records each round's median per benchmark,
# then prints the median of the round medians per side and their ratio. TARGET is the
# bench target (`--bench TARGET`), GROUP its criterion group, IDs the benchmark ids.
old_tree() {
    if [ $# -ne 2 ]; then
        echo "usage: $0 ROUNDS OLD_REV" >&2
        exit 2
    fi
    rounds="$1"
    old_rev="$2"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    old_dir="$(mktemp -d)"
    # shellcheck disable=SC2064 # the directory is known now
    trap "rm -rf '$old_dir'" EXIT
    git archive "$old_rev" | tar -x -C "$old_dir"
    sed -i -e '0,/^name = "extproc-gateway"/s//name = "extproc-gateway-old"/' \
        -e 's/^extproc-gateway = { path = "\."/extproc-gateway = { package = "extproc-gateway-old", path = "."/' \
        "$old_dir/Cargo.toml"
}

interleave() {
    local bench="$1" group="$2" rounds="$3" old="$4"
    shift 4
    local ids=("$@") results i side dir b m
    results="$(mktemp)"
    for i in $(seq 1 "$rounds"); do
        for side in old new; do
            dir="$PWD"
            [ "$side" = old ] && dir="$old"
            (cd "$dir" && cargo bench --bench "$bench" -- --warm-up-time 1 --measurement-time 3 "$group/") >/dev/null 2>&1
            for b in "${ids[@]}"; do
                m="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
                    "$CARGO_TARGET_DIR/criterion/$group/$b/new/estimates.json")"
                echo "$b $side $m" >>"$results"
                printf 'round %d: %-28s %s %12.0f ns\n' "$i" "$b" "$side" "$m"
            done
        done
    done
    python3 - "$results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for bench in dict.fromkeys(r[0] for r in rows):
    old = [float(r[2]) for r in rows if r[0] == bench and r[1] == "old"]
    new = [float(r[2]) for r in rows if r[0] == bench and r[1] == "new"]
    mo, mn = statistics.median(old), statistics.median(new)
    print(f"{bench}: median of {len(old)} interleaved rounds: old {mo:,.0f} ns, new {mn:,.0f} ns, new/old {mn / mo:.3f}")
PY
    rm -f "$results"
}
