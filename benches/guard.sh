#!/usr/bin/env bash
# Regression guard for the request path: run it before merging anything that touches
# src/proxy/, src/net/, src/auth/ or pingora's configuration. A few minutes on 2 cores.
#
#   benches/guard.sh                 # hubgate vs nginx, same run, REPS=2 x 5 s per measure
#   BASE=<git rev> benches/guard.sh  # also the binary built from BASE, in the same run
#
# It runs benches/compare.sh with PROXIES="hubgate nginx" (no CHP, no idle-websocket holds)
# and fails when a same-run ratio hubgate/nginx is above its limit in benches/guard-limits
# (metric ratio), which holds the last accepted figures plus a margin for noise. Ratios, not
# absolute figures: both proxies see the same machine at the same minutes, so a busy
# neighbour moves both. With BASE, the binary built from BASE is measured by a second
# compare.sh run right after the first, and both ratios are printed side by side.
#
# Environment: REPS [2] DURATION [5] LIMITS [benches/guard-limits] and every compare.sh knob.
# Exit status: 0 within limits, 1 a ratio above its limit, 2 the bench itself failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
LIMITS="${LIMITS:-$ROOT/benches/guard-limits}"
OUTDIR="$(mktemp -d -t hubgate-guard.XXXXXX)"
trap 'rm -rf "$OUTDIR"' EXIT

run() { # run LABEL HUBGATE_BINARY
    REPS="${REPS:-2}" DURATION="${DURATION:-5}" C1_DURATION="${C1_DURATION:-3}" \
        WS_DURATION="${WS_DURATION:-3}" PROXIES="hubgate nginx" TLS_PROXIES="" TLS_UP_PROXIES="" WS_HOLD_N=0 \
        HUBGATE="$2" HUBGATE_LABEL="$1" OUT="$OUTDIR/$1.md" \
        bash benches/compare.sh >"$OUTDIR/$1.log" 2>&1 || {
        echo "guard.sh: compare.sh failed for $1:" >&2
        tail -n 20 "$OUTDIR/$1.log" >&2
        exit 2
    }
}

cargo build --release -p hubgate -p hubgate-load >&2 || exit 2
run HEAD "$ROOT/target/release/hubgate"
labels=(HEAD)
if [[ -n "${BASE:-}" ]]; then
    wt="$OUTDIR/base"
    git worktree add -q --detach "$wt" "$BASE" || exit 2
    (cd "$wt" && CARGO_TARGET_DIR="$ROOT/target/guard-base" cargo build --release -p hubgate >&2) || {
        git worktree remove --force "$wt"
        exit 2
    }
    git worktree remove --force "$wt"
    run base "$ROOT/target/guard-base/release/hubgate"
    labels+=(base)
    echo "guard.sh: base = $BASE" >&2
fi

python3 - "$LIMITS" "$OUTDIR" "${labels[@]}" <<'EOF'
import json, statistics, sys
limits_file, outdir, labels = sys.argv[1], sys.argv[2], sys.argv[3:]
limits = {}
for line in open(limits_file):
    line = line.split("#", 1)[0].split()
    if len(line) == 2:
        limits[line[0]] = float(line[1])
bad = []
print(f"{'metric':<12} " + " ".join(f"{l + ' hubgate/nginx':>24}" for l in labels) + "   limit")
for metric, limit in limits.items():
    cells = []
    for label in labels:
        v = json.load(open(f"{outdir}/{label}.json"))["values"]
        h, n = v.get(f"{metric}:hubgate"), v.get(f"{metric}:nginx")
        if not h or not n:
            cells.append("-")
            continue
        r = statistics.median(h.values()) / statistics.median(n.values())
        cells.append(f"{r:.2f}× ({statistics.median(h.values()):.1f}/{statistics.median(n.values()):.1f})")
        if label == labels[0] and r > limit:
            bad.append(f"{metric} {r:.2f}× > {limit:.2f}×")
    print(f"{metric:<12} " + " ".join(f"{c:>24}" for c in cells) + f"   {limit:.2f}×")
if bad:
    print("guard.sh: above the limits: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
print("guard.sh: within the limits of " + limits_file)
EOF
