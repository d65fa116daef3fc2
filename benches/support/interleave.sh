# Sourced by the old-vs-new cost scripts (chain_cost.sh, mutations_cost.sh): runs one
# criterion bench target from the old tree and from the working tree, interleaved
# (old, new, old, new, ...), records each round's median per benchmark, then prints the
# median of the round medians per side and their ratio.
#   interleave TARGET GROUP ROUNDS OLD_DIR ID...
# TARGET is the bench target (`--bench TARGET`), GROUP its criterion group, IDs the
# benchmark ids within it; CARGO_TARGET_DIR must be set (both trees share it).
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
